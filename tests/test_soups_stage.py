"""The soups stage end to end on tiny checkpoints the tests write: inputs, checks, outputs, bad input."""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

import models.cli  # noqa: F401  (registers the project_root resolver)
from datasets import EvalSet
from eval.checkpoints import resolve_checkpoints
from models.checkpoint import CheckpointMeta, read_meta, save_checkpoint, sha256_prefix
from models.classifier import ImageClassifier, embed_dim_of, load_classifier
from models.cli import CONF_DIR
from models.errors import UserError
from models.factory import create_clip
from models.results import read_records
from soups.checks import IngredientSpec, check_compatible
from soups.ingredients import resolve_paths
from soups.stage import build_context, run_soup
from soups.streaming import iter_safetensors, load_state

ARCH = "SoupTestViT"
CLASSES = ["a", "b", "c"]
SET_SIZE = 24


@pytest.fixture(scope="module")
def base_state(tmp_path_factory) -> dict[str, torch.Tensor]:
    """A tiny open_clip ViT classifier (registered as an architecture, like the project's JSON configs)."""
    config = tmp_path_factory.mktemp("arch") / f"{ARCH}.json"
    vision = {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    config.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": vision,
                "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    clip_model, _, _ = create_clip(ARCH, None)
    return ImageClassifier(clip_model.visual, embed_dim_of(clip_model), len(CLASSES)).state_dict()


def meta(kind: str = "individual", num_classes: int = 3, arch: str = ARCH) -> CheckpointMeta:
    return CheckpointMeta(arch=arch, pretrained=None, num_classes=num_classes, classes="toy", kind=kind)


def write_sweep(root: Path, base: dict, count: int, scale: float = 0.05, done: bool = True) -> list[Path]:
    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(100 + i)
        state = {k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in base.items()}
        run = root / f"model_{i}"
        save_checkpoint(run / "model.safetensors", state, meta())
        if done:
            (run / "DONE").write_text("")
        paths.append(run / "model.safetensors")
    return paths


def fake_sets(data_cfg, transform, names):
    """Random images with fixed labels in the suite's roles (the stage never looks at the pixels)."""
    roles = {data_cfg.heldout: "heldout", data_cfg.id: "id"}
    sets = []
    for index, name in enumerate(names):
        generator = torch.Generator().manual_seed(index)
        images = torch.randn(SET_SIZE, 3, 16, 16, generator=generator)
        labels = torch.arange(SET_SIZE) % len(CLASSES)
        sets.append(EvalSet(name, roles.get(name, "shift"), TensorDataset(images, labels), CLASSES))
    return sets


def soup_cfg(method: str, ingredients, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "soups",
            overrides=[
                f"soup={method}",
                f"ingredients={ingredients}",
                "eval.batch_size=8",
                "data.batch_size=8",
                "eval.sets=[photo,sketch]",
                *extra,
            ],
        )


def classifier_logits(path: Path, eval_set: EvalSet) -> torch.Tensor:
    model, _ = load_classifier(path)
    with torch.no_grad():
        return model(torch.stack([x for x, _ in eval_set.dataset]))


# --- reading --------------------------------------------------------------------------------------------


def test_streaming_reader_matches_safetensors_own_loader(tmp_path):
    tensors = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(tmp_path / "x.safetensors"))
    expected = load_file(str(tmp_path / "x.safetensors"))
    ours = dict(iter_safetensors(tmp_path / "x.safetensors"))
    assert ours.keys() == expected.keys()
    for key in expected:
        assert ours[key].dtype == expected[key].dtype and torch.equal(ours[key], expected[key])


def test_a_nan_is_an_error_naming_ingredient_and_key(tmp_path):
    save_checkpoint(tmp_path / "bad.safetensors", {"w": torch.tensor([1.0, float("nan")]), "v": torch.ones(1)}, meta())
    with pytest.raises(UserError, match=r"bad.safetensors: tensor 'w' holds NaN or inf"):
        load_state(tmp_path / "bad.safetensors")
    save_checkpoint(tmp_path / "inf.safetensors", {"w": torch.tensor([float("inf")])}, meta())
    with pytest.raises(UserError, match=r"inf.safetensors: tensor 'w' holds NaN or inf"):
        load_state(tmp_path / "inf.safetensors")


# --- inputs and checks -----------------------------------------------------------------------------------


def test_inputs_glob_list_and_sweep_folder(tmp_path):
    state = {"w": torch.zeros(2)}
    for name, done in [("r0", True), ("r1", True), ("r2", False)]:
        save_checkpoint(tmp_path / "sweep" / name / "model.safetensors", state, meta())
        if done:
            (tmp_path / "sweep" / name / "DONE").write_text("")
    sweep = tmp_path / "sweep"
    assert resolve_paths(str(sweep)) == [sweep / "r0/model.safetensors", sweep / "r1/model.safetensors"]  # r2 unfinished
    assert resolve_paths(f"{sweep}/r*/model.safetensors") == [sweep / f"r{i}/model.safetensors" for i in range(3)]
    assert resolve_paths([str(sweep / "r1/model.safetensors"), str(sweep / "r0")]) == [
        sweep / "r1/model.safetensors",
        sweep / "r0/model.safetensors",
    ]
    with pytest.raises(UserError, match="listed twice"):
        resolve_paths([str(sweep / "r0"), str(sweep / "r0/model.safetensors")])
    (sweep / "r0/DONE").unlink()
    (sweep / "r1/DONE").unlink()
    with pytest.raises(UserError, match="no finished runs"):
        resolve_paths(str(sweep))


def test_sweep_folders_and_globs_list_ingredients_in_numeric_order(tmp_path):
    """model_2 before model_10, as the official files are numbered (a string sort puts model_10 first)."""
    for index in (10, 2, 1):
        save_checkpoint(tmp_path / "sweep" / f"model_{index}" / "model.safetensors", {"w": torch.zeros(2)}, meta())
        (tmp_path / "sweep" / f"model_{index}" / "DONE").write_text("")
    expected = [tmp_path / "sweep" / f"model_{i}" / "model.safetensors" for i in (1, 2, 10)]
    assert resolve_paths(str(tmp_path / "sweep")) == expected
    assert resolve_paths(f"{tmp_path}/sweep/model_*/model.safetensors") == expected
    assert resolve_checkpoints(str(tmp_path / "sweep")) == [p.resolve() for p in expected]
    assert resolve_checkpoints(f"{tmp_path}/sweep/*/model.safetensors") == [p.resolve() for p in expected]


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(arch="ViT-B-32"), "architecture 'ViT-B-32' differs"),
        (dict(num_classes=5), "mismatched class counts"),
        (dict(tensors={"w": ((2,), "torch.float32")}), "lacks key 'b'"),
        (dict(tensors={"w": ((3,), "torch.float32"), "b": ((1,), "torch.float32")}), r"key 'w' has shape \[3\]"),
        (dict(tensors={"w": ((2,), "torch.float16"), "b": ((1,), "torch.float32")}), "key 'w' has dtype torch.float16"),
    ],
)
def test_ingredient_checks_name_the_checkpoint_and_key(change, message):
    first = IngredientSpec("one.safetensors", ARCH, 3, "toy", {"w": ((2,), "torch.float32"), "b": ((1,), "torch.float32")})
    fields = {**first.__dict__, "name": "two.safetensors", **change}
    with pytest.raises(UserError, match=f"two.safetensors: .*{message}"):
        check_compatible([first, IngredientSpec(**fields)])


# --- every method, end to end on a tiny model ---------------------------------------------------------


def test_uniform_soup_checkpoint_records_and_eval_compatibility(tmp_path, base_state):
    paths = write_sweep(tmp_path / "sweep", base_state, 3)
    out = tmp_path / "out"
    run_soup(soup_cfg("uniform", tmp_path / "sweep"), out, ["soup=uniform"], fake_sets)
    soup = load_file(str(out / "model.safetensors"))
    ingredients = [load_file(str(p)) for p in paths]
    for key, value in soup.items():  # the hand mean, from safetensors' own reader
        torch.testing.assert_close(value, (ingredients[0][key] + ingredients[1][key] + ingredients[2][key]) / 3)
    info = read_meta(out / "model.safetensors")
    assert info.kind == "soup" and info.hparams["soup_kind"] == "uniform_soup"
    assert [(i["path"], i["sha256"], i["weight"]) for i in info.ingredients] == [
        (str(p), sha256_prefix(p), pytest.approx(1 / 3)) for p in paths
    ]
    records = read_records(out / "results.jsonl")
    assert [(r["dataset"], r["role"], r["model_id"], r["kind"]) for r in records] == [
        ("heldout", "heldout", "uniform_soup", "uniform_soup"),
        ("photo", "id", "uniform_soup", "uniform_soup"),
        ("sketch", "shift", "uniform_soup", "uniform_soup"),
    ]
    # The checkpoint loads as a classifier (as python -m eval does) and gives the recorded accuracy.
    for record, eval_set in zip(records, fake_sets(soup_cfg("uniform", "x").data, None, ["heldout", "photo", "sketch"])):
        logits = classifier_logits(out / "model.safetensors", eval_set)
        assert record["top1"] == pytest.approx(float((logits.argmax(1) == eval_set.dataset.tensors[1]).float().mean()))
        assert record["checkpoint"]["sha256"] == sha256_prefix(out / "model.safetensors")


@pytest.mark.parametrize("method,accept", [("greedy", "gt"), ("greedy", "ge"), ("greedy_random_order", "gt"), ("greedy_ensemble", "gt")])
def test_greedy_methods_write_a_consistent_trajectory(tmp_path, base_state, method, accept):
    write_sweep(tmp_path / "sweep", base_state, 4, scale=0.5)
    out = tmp_path / "out"
    outcome = run_soup(soup_cfg(method, tmp_path / "sweep", f"soup.accept={accept}"), out, [], fake_sets)
    lines = [json.loads(line) for line in (out / "greedy_trajectory.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["accepted"]
    soup_top1 = lines[0]["heldout_top1"]
    for line in lines[1:]:  # the soup's accuracy changes only on acceptance, and acceptance follows the rule
        if line["accepted"]:
            assert line["heldout_top1"] > soup_top1 if accept == "gt" else line["heldout_top1"] >= soup_top1
            soup_top1 = line["heldout_top1"]
        elif line["heldout_top1"] is not None:
            assert line["heldout_top1"] <= soup_top1 if accept == "gt" else line["heldout_top1"] < soup_top1
        assert line["soup_heldout_top1"] == soup_top1
    heldout = next(r for r in read_records(out / "results.jsonl") if r["role"] == "heldout")
    assert heldout["top1"] == pytest.approx(soup_top1)  # the final soup scores what the trajectory says
    accepted = [line["ingredient"] for line in lines if line["accepted"]]
    if method == "greedy_ensemble":
        assert not (out / "model.safetensors").exists() and (out / "predictions.safetensors").exists()
        assert json.loads((out / "members.json").read_text()) == accepted
    else:
        weights = {i["path"]: i["weight"] for i in read_meta(out / "model.safetensors").ingredients}
        assert {p for p, w in weights.items() if w > 0} == set(accepted)
        assert outcome.kind == ("greedy_soup_random_order" if method == "greedy_random_order" else "greedy_soup")


def test_greedy_reads_recorded_heldout_accuracy(tmp_path, base_state):
    paths = write_sweep(tmp_path / "sweep", base_state, 2, scale=0.5)
    # Record a (false) perfect held-out score for the second run: greedy must trust it and start from it.
    record = {
        "model_id": "m1",
        "kind": "individual",
        "dataset": "heldout",
        "role": "heldout",
        "top1": 1.0,
        "n": SET_SIZE,
        "checkpoint": {"sha256": sha256_prefix(paths[1])},
    }
    (paths[1].parent / "results.jsonl").write_text(json.dumps(record) + "\n")
    out = tmp_path / "out"
    run_soup(soup_cfg("greedy", tmp_path / "sweep"), out, [], fake_sets)
    lines = [json.loads(line) for line in (out / "greedy_trajectory.jsonl").read_text().splitlines()]
    assert lines[0]["ingredient"] == str(paths[1]) and lines[0]["ingredient_heldout_top1"] == 1.0
    assert not lines[1]["accepted"]  # nothing beats a perfect soup under strict >


def test_ensemble_averages_the_members_logits(tmp_path, base_state):
    paths = write_sweep(tmp_path / "sweep", base_state, 3, scale=0.5)
    out = tmp_path / "out"
    run_soup(soup_cfg("ensemble", tmp_path / "sweep"), out, [], fake_sets)
    predictions = load_file(str(out / "predictions.safetensors"))
    eval_set = fake_sets(soup_cfg("ensemble", "x").data, None, ["heldout"])[0]
    expected = sum(classifier_logits(p, eval_set) for p in paths) / 3
    torch.testing.assert_close(predictions["ensemble/heldout/logits"].float(), expected, atol=1e-2, rtol=1e-3)
    record = next(r for r in read_records(out / "results.jsonl") if r["role"] == "heldout")
    assert record["top1"] == pytest.approx(float((expected.argmax(1) == eval_set.dataset.tensors[1]).float().mean()))
    assert not (out / "model.safetensors").exists()


def test_wise_ft_interpolates_and_writes_one_record_per_alpha(tmp_path, base_state):
    (path,) = write_sweep(tmp_path / "sweep", base_state, 1, scale=0.5)
    save_checkpoint(tmp_path / "zeroshot.safetensors", base_state, meta("zeroshot"))
    out = tmp_path / "out"
    run_soup(
        soup_cfg("wise_ft", path, f"soup.init={tmp_path / 'zeroshot.safetensors'}", "soup.alphas=[0.0,0.5,1.0]", "soup.alpha=0.5"),
        out,
        [],
        fake_sets,
    )
    finetuned = load_file(str(path))
    soup = load_file(str(out / "model.safetensors"))
    for key, value in soup.items():
        torch.testing.assert_close(value, (base_state[key] + finetuned[key]) / 2)
    records = read_records(out / "results.jsonl")
    assert sorted({(r["model_id"], r["alpha"]) for r in records}) == [
        ("wise_ft_alpha0.00", 0.0),
        ("wise_ft_alpha0.50", 0.5),
        ("wise_ft_alpha1.00", 1.0),
    ]
    assert all(r["kind"] == "wise_ft" for r in records) and len(records) == 9
    assert [r["alpha"] for r in records if r["checkpoint"]] == [0.5, 0.5, 0.5]  # only α = 0.5 was saved
    assert {i.get("role") for i in read_meta(out / "model.safetensors").ingredients} == {None, "init"}


def test_model_stock_checkpoint_matches_the_two_model_closed_form(tmp_path, base_state):
    paths = write_sweep(tmp_path / "sweep", base_state, 2, scale=0.5)
    save_checkpoint(tmp_path / "zeroshot.safetensors", base_state, meta("zeroshot"))
    out = tmp_path / "out"
    run_soup(soup_cfg("model_stock", tmp_path / "sweep", f"soup.init={tmp_path / 'zeroshot.safetensors'}"), out, [], fake_sets)
    one, two, soup = load_file(str(paths[0])), load_file(str(paths[1])), load_file(str(out / "model.safetensors"))
    negative = []
    for key in soup:
        d1, d2 = (one[key] - base_state[key]).flatten().double(), (two[key] - base_state[key]).flatten().double()
        if not soup[key].is_floating_point() or d1.norm() == 0:
            continue
        cos = float(F.cosine_similarity(d1, d2, dim=0))
        t = max(0.0, 2 * cos / (1 + cos))  # clipped at 0: independent random task vectors often point apart
        negative += [key] if cos < 0 else []
        torch.testing.assert_close(soup[key], (base_state[key].double() + t * (d1 + d2).reshape(soup[key].shape) / 2).float())
        assert not math.isnan(t)
    clipped = json.loads((out / "model_stock_clipped.json").read_text())
    assert negative and sorted(clipped["keys"]) == sorted(negative) and clipped["clipped"] == len(negative)
    assert read_meta(out / "model.safetensors").hparams["clipped_tensors"] == len(negative)


@pytest.mark.parametrize("method", ["learned", "learned_by_layer"])
def test_learned_soups_run_and_record(tmp_path, base_state, method):
    write_sweep(tmp_path / "sweep", base_state, 3, scale=0.5)
    out = tmp_path / "out"
    outcome = run_soup(soup_cfg(method, tmp_path / "sweep", "soup.epochs=2"), out, [], fake_sets)
    assert sum(outcome.weights) == pytest.approx(1.0)
    learned = json.loads((out / "learned_weights.json").read_text())
    assert len(learned["losses"]) == 2 and all(sum(a) == pytest.approx(1.0) for a in learned["alpha"].values())
    assert {r["kind"] for r in read_records(out / "results.jsonl")} == {outcome.kind}


def test_official_pt_checkpoints_are_imported(tmp_path, base_state):
    paths = []
    for i in range(2):
        generator = torch.Generator().manual_seed(i)
        official = {f"model.{k}": v + torch.randn(v.shape, generator=generator) for k, v in base_state.items() if k.startswith("visual.")}
        official["classification_head.weight"] = torch.randn(3, 16, generator=generator)
        official["classification_head.bias"] = torch.randn(3, generator=generator)
        official["model.logit_scale"] = torch.tensor(4.6)  # text-side keys are dropped on import
        torch.save(official, tmp_path / f"model_{i}.pt")
        paths.append(tmp_path / f"model_{i}.pt")
    out = tmp_path / "out"
    run_soup(
        soup_cfg("uniform", f"{tmp_path}/model_*.pt", f"model.arch={ARCH}", "model.classes=toy", "soup.evaluate=false"), out, [], fake_sets
    )
    raw = [torch.load(p, weights_only=True) for p in paths]
    soup = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(soup["head.weight"], (raw[0]["classification_head.weight"] + raw[1]["classification_head.weight"]) / 2)
    torch.testing.assert_close(soup["visual.conv1.weight"], (raw[0]["model.visual.conv1.weight"] + raw[1]["model.visual.conv1.weight"]) / 2)
    assert "logit_scale" not in soup and not (out / "results.jsonl").exists()


# --- bad input through the command line --------------------------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    good = {"visual.w": torch.ones(2), "head.weight": torch.ones(3, 2), "head.bias": torch.zeros(3)}
    save_checkpoint(tmp_path / "good/model.safetensors", good, meta(arch="TinyCLIP"))
    truncated = (tmp_path / "good/model.safetensors").read_bytes()[:-5]
    (tmp_path / "truncated.safetensors").write_bytes(truncated)
    with open(tmp_path / "code.pt", "wb") as handle:
        pickle.dump({"model.visual.w": Exploit()}, handle)
    wide = {"visual.w": torch.ones(2), "head.weight": torch.ones(5, 2), "head.bias": torch.zeros(5)}
    save_checkpoint(tmp_path / "five/model.safetensors", wide, meta(arch="TinyCLIP", num_classes=5))
    return {
        "empty": ("ingredients=[]", "ingredient set is empty"),
        "missing": (f"ingredients={tmp_path}/nowhere.safetensors", "nowhere.safetensors: no such file"),
        "truncated": (
            f"ingredients=[{tmp_path}/good/model.safetensors,{tmp_path}/truncated.safetensors]",
            "truncated.safetensors: unreadable checkpoint",
        ),
        "pickled_code": (f"ingredients=[{tmp_path}/code.pt]", "code.pt: refused to unpickle"),
        "class_counts": (f"ingredients=[{tmp_path}/good/model.safetensors,{tmp_path}/five/model.safetensors]", "mismatched class counts"),
    }


BAD_CASES = ["empty", "missing", "truncated", "pickled_code", "class_counts"]


def no_outputs(out: Path) -> bool:
    return not any((out / name).exists() for name in ("model.safetensors", "results.jsonl", "predictions.safetensors", "DONE"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_error_and_no_output(tmp_path, case):
    override, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("soups", overrides=[override, "model=tiny_clip", "device=cpu"])
    with pytest.raises(UserError) as caught:
        run_soup(cfg, out, [], fake_sets)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert no_outputs(out)


# The command line's one line and exit 2 for these errors (an empty set, a pickle that runs code): test_bad_input.py,
# empty_set in this process and malicious_pickle as the real `python -m soups` command.


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("method,written", [("uniform", "model.safetensors"), ("ensemble", "predictions.safetensors")])
def test_soup_outputs_get_the_mode_a_plain_open_gets(tmp_path, base_state, umask, method, written):
    """safetensors' save_file replaces the temp file, so a chmod before it was lost (every soup was 0600)."""
    write_sweep(tmp_path / "sweep", base_state, 2)
    old = os.umask(umask)
    try:
        run_soup(soup_cfg(method, tmp_path / "sweep"), tmp_path / "out", [], fake_sets)
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in (written, "results.jsonl"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == expected, name


def test_heldout_outcomes_come_per_chunk_in_the_chunks_order(tmp_path, base_state):
    # The greedy soup scores held-out examples in its own order (hardest first); chunks larger than the
    # eval batch (8 here) are scored in several batches but reported as one.
    (path,) = write_sweep(tmp_path / "sweep", base_state, 1, scale=0.5)
    cfg = soup_cfg("greedy", tmp_path / "sweep")
    scorer = build_context(cfg, fake_sets).scorer
    chunks = [torch.tensor([23, 5, 0]), torch.tensor([*range(1, 5), *range(6, 23)])]
    outcomes = list(scorer.heldout_outcomes(load_state(path), chunks))
    (heldout,) = fake_sets(cfg.data, None, ["heldout"])
    expected = (classifier_logits(path, heldout).argmax(1) == heldout.dataset.tensors[1]).long()
    assert [x.tolist() for x in outcomes] == [expected[c].tolist() for c in chunks]
