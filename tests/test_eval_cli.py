"""`python -m eval` end to end on miniature ImageNet trees: records, per-class accuracy, bad input."""

from __future__ import annotations

import json
import pkgutil

import pytest
import torch
from conftest import mark_done, run_in_process
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from datasets.imagenet_miniature import make_miniature
from eval.checkpoints import resolve_checkpoints
from eval.runner import evaluate_checkpoints
from models.classifier import load_classifier
from models.errors import UserError
from models.factory import create_clip
from models.results import avg_shift_accuracy, load_results
from tests.test_eval_helpers import eval_cfg, imagenet_cfg, one_thread, random_checkpoints, run_in_processes  # noqa: F401

CPU = torch.device("cpu")

COMMON = ["data=imagenet", "data.workers=0", "data.batch_size=64", "data.heldout_per_class=1"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    mini = make_miniature(root / "data", sets=("ImageNetR", "ObjectNet"), per_class=1, objectnet_classes=4)
    checkpoints = random_checkpoints(root / "sweep", 2)
    return root, mini, checkpoints


def expected_predictions(checkpoint, paths, project):
    """Independently of the eval stage: decode each file, apply the model's open_clip transform, take argmax."""
    classifier, meta = load_classifier(checkpoint)
    _, transform, _ = create_clip(meta.arch)  # open_clip's own val transform for the architecture
    with torch.no_grad():
        images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return project(classifier(images)).argmax(dim=1)


def test_records_match_an_independent_computation(tree, tmp_path):
    root, mini, checkpoints = tree
    out = tmp_path / "eval"
    result = run_in_process(  # eval as a real process: tests/test_faults.py (a stop signal) and the pipelines
        "eval",
        *COMMON,
        f"data.root={mini.root}",
        f"checkpoints={root / 'sweep'}",
        f"out={out}",
        "eval.sets=[ImageNetR]",
        "eval.save_logits=true",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["model_id"], r["dataset"], r["role"]) for r in records] == [("run0", "ImageNetR", "shift"), ("run1", "ImageNetR", "shift")]
    paths = list(mini.labels["ImageNetR"])
    labels = torch.tensor([mini.labels["ImageNetR"][p] for p in paths])
    columns = [int(i) for i in pkgutil.get_data("timm.data", "_info/imagenet_r_indices.txt").split()]  # the official 200
    for record, checkpoint in zip(records, checkpoints):
        predicted = expected_predictions(checkpoint, sorted(paths), lambda x: x[:, columns])
        truth = labels[[paths.index(p) for p in sorted(paths)]]
        hits = predicted == truth
        assert record["n"] == 200 and record["top1"] == int(hits.sum()) / 200
        assert record["per_class_n"] == [1] * 200
        assert record["per_class_top1"] == [float(h) for h in hits[truth.argsort()].tolist()]
        assert record["checkpoint"]["path"] == str(checkpoint) and len(record["checkpoint"]["sha256"]) == 12
        assert record["kind"] == "individual" and "eval.sets=[ImageNetR]" in record["config"]
        saved = load_file(str(out / "logits" / record["model_id"] / "ImageNetR.safetensors"))
        assert saved["logits"].dtype == torch.float16 and saved["logits"].shape == (200, 200)
        assert saved["logits"].float().argmax(dim=1).tolist() == predicted.tolist() or record["top1"] == pytest.approx(
            float((saved["logits"].float().argmax(dim=1) == saved["labels"]).float().mean()), abs=1 / 200
        )
    table = load_results(out)  # what plots read
    assert set(table["dataset"]) == {"ImageNetR"} and len(table) == 2
    assert (out / "DONE").exists()


@pytest.mark.usefixtures("one_thread")
def test_share_decoding_off_gives_the_same_records(tree, tmp_path):
    root, mini, _ = tree
    tops = {}
    for share in (True, False):
        records = evaluate_checkpoints(
            str(root / "sweep"), imagenet_cfg(mini.root), eval_cfg(sets=["ObjectNet"], share_decoding=share), tmp_path / str(share), CPU
        )
        tops[share] = [(r["model_id"], r["top1"], r["per_class_top1"]) for r in records]
    assert tops[True] == tops[False] and len(tops[True]) == 2


def test_class_count_mismatch_names_the_checkpoint(tree, tmp_path):
    _, mini, _ = tree
    wrong = random_checkpoints(tmp_path / "world", 1, num_classes=10, classes="world")[0]
    with pytest.raises(UserError) as err:
        evaluate_checkpoints([str(wrong)], imagenet_cfg(mini.root), eval_cfg(sets=["ImageNetR"]), tmp_path / "out", CPU)
    assert str(wrong) in str(err.value) and "10 classes" in str(err.value) and "1000" in str(err.value)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_bad_layout_names_the_layout(tree, tmp_path):
    root, _, _ = tree
    with pytest.raises(UserError, match="ImageNetA: expected ImageNet-A: 200 wnid folders .* missing folder"):
        evaluate_checkpoints(str(root / "sweep"), imagenet_cfg(tmp_path / "nowhere"), eval_cfg(sets=["ImageNetA"]), tmp_path / "out", CPU)


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.mark.usefixtures("one_thread")
def test_unreadable_image_fails_or_is_skipped_and_counted(tree, tmp_path):
    root, _, _ = tree
    mini = make_miniature(tmp_path / "data", sets=("ImageNetR",), per_class=1)
    broken = sorted(mini.labels["ImageNetR"])[7]
    with open(broken, "wb") as handle:
        handle.write(b"not a jpeg")
    checkpoint = root / "sweep" / "run0" / "model.safetensors"
    args = [*COMMON, f"data.root={mini.root}", f"checkpoints={checkpoint}", "eval.sets=[ImageNetR]", "data.workers=1"]
    line = one_error_line(run_in_process("eval", *args, f"out={tmp_path / 'strict'}"))  # also through a DataLoader worker
    assert broken in line and "eval.skip_bad_images=true" in line
    assert not (tmp_path / "strict" / "results.jsonl").exists() and (tmp_path / "strict" / "FAILED").exists()
    (record,) = evaluate_checkpoints(
        [str(checkpoint)], imagenet_cfg(mini.root), eval_cfg(sets=["ImageNetR"], skip_bad_images=True), tmp_path / "lenient", CPU
    )
    assert record["skipped"] == 1 and record["skipped_examples"] == [broken] and record["n"] == 199
    assert record["per_class_n"][7] == 0 and record["per_class_top1"][7] is None


def test_no_checkpoints_matched(tmp_path):
    with pytest.raises(UserError, match="matched no files"):
        resolve_checkpoints(f"{tmp_path}/*.safetensors")


def _eval_job(sweep: str, data_root: str, out: str) -> None:
    torch.set_num_threads(1)
    evaluate_checkpoints(sweep, imagenet_cfg(data_root), eval_cfg(sets=["ObjectNet"]), out, CPU)


def test_sixteen_eval_processes_lose_no_records(tree, tmp_path):
    """16 concurrent eval jobs, each into its own run folder; aggregation reads every record."""
    root, mini, _ = tree
    run_in_processes(_eval_job, [(str(root / "sweep"), str(mini.root), str(tmp_path / "eval" / f"job{i}")) for i in range(16)])
    mark_done(*(tmp_path / "eval").iterdir())
    table = load_results(tmp_path / "eval")
    assert len(table) == 16 * 2 and table.groupby("source").size().tolist() == [2] * 16
    assert table.groupby("model_id")["top1"].nunique().tolist() == [1, 1]  # the same numbers in every job


def test_world_records_are_what_plots_read(tmp_path):
    """The eval stage on the embedded world (small scale): seven records per checkpoint, read back by plots."""
    from datasets.world import arrays, normalised_batch
    from plots.inputs import load_any

    checkpoints = random_checkpoints(tmp_path / "sweep", 2, num_classes=10, classes="world")
    out = tmp_path / "eval"
    result = run_in_process(
        "eval", "data.scale=small", f"paths.cache={tmp_path / 'cache'}", f"checkpoints={tmp_path / 'sweep'}", f"out={out}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = load_any(out)
    world_sets = ["heldout", "photo", "photo_v2", "rendition", "sketch", "unusual", "hard"]
    assert sorted(zip(table["model_id"], table["dataset"])) == sorted((f"run{i}", s) for i in range(2) for s in world_sets)
    assert dict(zip(table["dataset"], table["role"])) == {"heldout": "heldout", "photo": "id", **{s: "shift" for s in world_sets[2:]}}
    # independently of the eval stage: the world's raw arrays, normalised in one tensor op, through the classifier
    data_cfg = OmegaConf.create({"scale": "small", "root": str(tmp_path / "cache" / "world"), "seed": 0})
    classifier, _ = load_classifier(checkpoints[1])
    cfg = classifier.visual.preprocess_cfg
    for name in ("photo", "sketch"):
        world = arrays(data_cfg, name)
        with torch.no_grad():
            predicted = classifier(normalised_batch(world.images, cfg["mean"], cfg["std"])).argmax(dim=1)
        expected = float((predicted == torch.from_numpy(world.labels)).float().mean())
        (top1,) = table[(table["model_id"] == "run1") & (table["dataset"] == name)]["top1"]
        assert top1 == pytest.approx(expected, abs=1.5 / len(world.labels)), name
    shifts = table[(table["model_id"] == "run0") & (table["role"] == "shift")]["top1"]
    assert avg_shift_accuracy(table)["run0"] == pytest.approx(shifts.mean())


def test_a_grown_folder_scores_its_new_checkpoints_and_reuses_the_finished_ones(tmp_path):
    """Eval's identity is the files `checkpoints=` resolves to (path + sha256), not the string: a sweep folder
    that gains a run is scored again for that run only; a retrained run (new bytes) is rescored."""
    mini = make_miniature(tmp_path / "data", sets=("ObjectNet",), per_class=1, objectnet_classes=4)
    sweep, out = tmp_path / "sweep", tmp_path / "eval"
    first = random_checkpoints(sweep, 2)
    args = [*COMMON, f"data.root={mini.root}", f"checkpoints={sweep}", f"out={out}", "eval.sets=[ObjectNet]", "device=cpu"]

    def records() -> dict[str, dict]:
        lines = (out / "results.jsonl").read_text().splitlines()
        return {r["model_id"]: r for r in map(json.loads, lines)}

    assert run_in_process("eval", *args).returncode == 0
    before = records()
    assert sorted(before) == ["run0", "run1"]
    grown = random_checkpoints(tmp_path / "more", 3, seed=1)[2]
    (sweep / "run2").mkdir()
    grown.rename(sweep / "run2" / "model.safetensors")
    (sweep / "run2" / "DONE").write_text("")
    result = run_in_process("eval", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    after = records()
    assert sorted(after) == ["run0", "run1", "run2"] and (out / "DONE").exists()
    assert after["run0"] == before["run0"] and after["run1"] == before["run1"]  # reused as written, not rescored
    assert after["run2"]["checkpoint"]["path"] == str(sweep / "run2" / "model.safetensors")
    unchanged = (out / "results.jsonl").read_bytes()
    assert run_in_process("eval", *args).returncode == 0 and (out / "results.jsonl").read_bytes() == unchanged  # finished: skipped

    retrained = random_checkpoints(tmp_path / "again", 1, seed=2)[0]
    retrained.replace(first[1])  # run1 retrained in place: same path, other bytes
    assert run_in_process("eval", *args).returncode == 0
    last = records()
    assert last["run0"] == before["run0"] and last["run2"] == after["run2"]
    assert last["run1"]["checkpoint"]["sha256"] != before["run1"]["checkpoint"]["sha256"] and len(last) == 3
