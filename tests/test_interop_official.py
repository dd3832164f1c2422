"""Interop with the official model-soups release: `model_{i}.pt` import, refusal of code-carrying pickles,
and the official results format."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from eval.convert import main as convert_main
from models.checkpoint import read_meta
from models.classifier import load_classifier
from models.factory import create_clip
from models.results import make_record, read_official_results, write_official_results
from tests.test_eval_helpers import TINY_ARCH


def official_state(seed: int) -> dict[str, torch.Tensor]:
    """What the official `model_{i}.pt` holds: ModelWrapper's state dict, CLIP with `transformer.*` deleted."""
    torch.manual_seed(seed)
    clip_model, _, _ = create_clip(TINY_ARCH)
    state = {f"model.{k}": v for k, v in clip_model.state_dict().items() if not k.startswith("transformer.")}
    state["classification_head.weight"] = torch.randn(1000, clip_model.visual.output_dim)
    state["classification_head.bias"] = torch.randn(1000)
    return state


def test_import_official_checkpoints(tmp_path, capsys):
    folder = tmp_path / "official"
    folder.mkdir()
    states = {i: official_state(i) for i in (0, 1, 10)}
    for i, state in states.items():
        torch.save(state, folder / f"model_{i}.pt")
    hparams = {"model_0": {"info": "LP initialization"}, "model_1": {"lr": 3e-5, "epochs": 10}}
    (tmp_path / "hparam_info.json").write_text(json.dumps(hparams))
    args = [
        "import-official",
        str(folder),
        "--out",
        str(tmp_path / "ours"),
        "--arch",
        TINY_ARCH,
        "--pretrained",
        "none",
        "--hparams",
        str(tmp_path / "hparam_info.json"),
    ]
    assert convert_main(args) == 0
    assert [line.split(" -> ")[0].rsplit("/", 1)[1] for line in capsys.readouterr().out.splitlines()] == [
        "model_0.pt",
        "model_1.pt",
        "model_10.pt",
    ]
    for i, state in states.items():
        classifier, meta = load_classifier(tmp_path / "ours" / f"model_{i}.safetensors")
        ours = classifier.state_dict()
        torch.testing.assert_close(ours["head.weight"], state["classification_head.weight"], rtol=0, atol=0)
        torch.testing.assert_close(ours["head.bias"], state["classification_head.bias"], rtol=0, atol=0)
        visual = [k for k in state if k.startswith("model.visual.")]
        assert len(visual) == len([k for k in ours if k.startswith("visual.")])
        for key in visual:
            torch.testing.assert_close(ours[key.removeprefix("model.")], state[key], rtol=0, atol=0)
        assert (meta.arch, meta.num_classes, meta.classes) == (TINY_ARCH, 1000, "imagenet1k")
        assert meta.kind == ("lp" if i == 0 else "individual")
        assert meta.hparams.get("lr") == hparams.get(f"model_{i}", {}).get("lr")


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    state = official_state(0)
    state["payload"] = Exploit()
    torch.save(state, tmp_path / "model_0.pt")
    assert convert_main(["import-official", str(tmp_path / "model_0.pt"), "--out", str(tmp_path / "ours"), "--arch", TINY_ARCH]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "refused to unpickle" in err and "model_0.pt" in err and "\n" not in err
    assert not marker.exists() and not (tmp_path / "ours").exists()


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, capsys):
    state = official_state(0)
    del state[[k for k in state if k.startswith("model.visual.")][-1]]
    torch.save(state, tmp_path / "model_3.pt")
    assert convert_main(["import-official", str(tmp_path / "model_3.pt"), "--out", str(tmp_path / "ours"), "--arch", TINY_ARCH]) == 2
    err = capsys.readouterr().err
    assert "do not fit architecture TinyCLIP" in err and not (tmp_path / "ours").exists()


def test_records_round_trip_through_the_official_format(tmp_path):
    records = [
        make_record(model_id=f"model_{m}", kind="individual", dataset=d, role=r, correct=c + m, n=100)
        for m in range(2)
        for (d, r, c) in [("ImageNet2p", "heldout", 80), ("ImageNet", "id", 75), ("ImageNetV2", "shift", 64), ("ObjectNet", "shift", 42)]
    ]
    path = write_official_results(pd.DataFrame(records), tmp_path / "individual_model_results.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1] == {"model_name": "model_1", "ImageNet2p": 0.81, "ImageNet": 0.76, "ImageNetV2": 0.65, "ObjectNet": 0.43}
    back = read_official_results(path)
    assert sorted(zip(back["model_id"], back["dataset"], back["top1"])) == sorted((r["model_id"], r["dataset"], r["top1"]) for r in records)


def test_official_results_file_round_trips_exactly(reference_dir, tmp_path):
    source = reference_dir / "individual_model_results.jsonl"
    written = write_official_results(read_official_results(source), tmp_path / "copy.jsonl")
    original = {row["model_name"]: row for row in map(json.loads, source.read_text().splitlines())}
    copied = {row["model_name"]: row for row in map(json.loads, written.read_text().splitlines())}
    assert copied == original and len(copied) == 72
    assert list(next(iter(copied.values()))) == list(next(iter(original.values())))  # the official key order


@pytest.mark.parametrize("bad", ["{not json", '{"ImageNet": 0.7}'])
def test_malformed_official_files_name_the_line(tmp_path, bad):
    path = tmp_path / "individual_model_results.jsonl"
    path.write_text('{"model_name": "model_0", "ImageNet": 0.7}\n' + bad + "\n")
    with pytest.raises(Exception, match=r"individual_model_results.jsonl:2"):
        read_official_results(path)


def test_without_hparams_model_0_is_imported_as_the_lp_init(tmp_path, capsys):
    """The official release's model_0 is the LP initialisation (its hparam_info.json says "LP initialization");
    without --hparams the file name says it, so the table shows it as the LP init, not as a fine-tuned model."""
    for i in (0, 1):
        torch.save(official_state(i), tmp_path / f"model_{i}.pt")
    args = [
        "import-official",
        str(tmp_path / "model_0.pt"),
        str(tmp_path / "model_1.pt"),
        "--out",
        str(tmp_path / "ours"),
        "--arch",
        TINY_ARCH,
    ]
    assert convert_main(args) == 0
    assert [read_meta(tmp_path / "ours" / f"model_{i}.safetensors").kind for i in (0, 1)] == ["lp", "individual"]
