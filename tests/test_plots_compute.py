"""Figures 3-5 and the random-subset soups on tiny constructed checkpoints and data (no world, no download)."""

import json
import math

import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

import plots.compute as compute
from datasets import EvalSet
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.classifier import ImageClassifier, embed_dim_of, load_classifier
from models.evaluate import iter_logits
from models.factory import create_clip
from plots.approx import calibrate_beta
from plots.catalog import wanted
from plots.evaluator import CombinationEvaluator, average, single
from plots.table import SetNames

CLASSES = 5
ARCH = "PlotsTestViT"  # a few thousand weights, so every forward pass is cheap; registered by the fixture
ARCH_CONFIG = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 8, "heads": 1, "layers": 1},
}


def make_sets() -> list[EvalSet]:
    generator = torch.Generator().manual_seed(0)
    sets = []
    for name, role in (("H", "heldout"), ("I", "id"), ("S1", "shift"), ("S2", "shift")):
        images = torch.randn(40, 3, 16, 16, generator=generator)
        labels = torch.randint(0, CLASSES, (40,), generator=generator)
        sets.append(EvalSet(name, role, TensorDataset(images, labels), [str(c) for c in range(CLASSES)]))
    return sets


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """θ₀ and four fine-tuned models: θ₁ moves only the head weight, θ₂ only the head bias (orthogonal updates),
    θ₃ = θ₀ + 2(θ₁ − θ₀) (same direction as θ₁), θ₄ moves everything a little."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpts")
    (folder / f"{ARCH}.json").write_text(json.dumps(ARCH_CONFIG))
    open_clip.add_model_config(folder / f"{ARCH}.json")
    clip_model, _, _ = create_clip(ARCH, pretrained=None)
    init = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), CLASSES)
    state0 = {k: v.clone() for k, v in init.state_dict().items()}
    head_step = torch.randn_like(state0["head.weight"]) * 3.0
    bias_step = torch.randn_like(state0["head.bias"]) * 3.0
    states = [
        state0,
        {**state0, "head.weight": state0["head.weight"] + head_step},
        {**state0, "head.bias": state0["head.bias"] + bias_step},
        {**state0, "head.weight": state0["head.weight"] + 2 * head_step},
        {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state0.items()},
    ]
    paths = []
    for i, state in enumerate(states):
        meta = CheckpointMeta(arch=ARCH, pretrained=None, num_classes=CLASSES, classes="test", kind="zeroshot" if i == 0 else "individual")
        paths.append(str(save_checkpoint(folder / f"m{i}" / "model.safetensors", state, meta)))
    return paths, states


def direct_logits(path: str, eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
    model, _ = load_classifier(path)
    parts, labels = zip(*iter_logits([model], eval_set, batch_size=16))
    return torch.cat([p[0] for p in parts]), torch.cat(labels)


def test_evaluator_matches_direct_evaluation_and_caches(checkpoints, tmp_path):
    paths, states = checkpoints
    sets = make_sets()
    evaluator = CombinationEvaluator(paths, sets, tmp_path / "cache", chunk=2, batch_size=16)
    (logits, labels), (mid, _) = evaluator.logits([single(1), average([1, 2])], "I")
    expected, expected_labels = direct_logits(paths[1], sets[1])
    assert torch.allclose(logits, expected, atol=1e-5) and torch.equal(labels, expected_labels)
    # The midpoint: a checkpoint averaged by hand, saved and loaded through the ordinary path.
    by_hand = {k: (states[1][k] + states[2][k]) / 2 if v.is_floating_point() else v for k, v in states[1].items()}
    meta = CheckpointMeta(arch=ARCH, pretrained=None, num_classes=CLASSES, classes="test", kind="soup")
    mid_path = save_checkpoint(tmp_path / "mid.safetensors", by_hand, meta)
    assert torch.allclose(mid, direct_logits(str(mid_path), sets[1])[0], atol=1e-5)
    passes = evaluator.forward_passes
    again = CombinationEvaluator(paths, sets, tmp_path / "cache", batch_size=16)
    (cached, _), (cached_mid, _) = again.logits([single(1), average([1, 2])], "I")
    assert again.forward_passes == 0 and passes == 2
    assert torch.equal(cached, logits) and torch.equal(cached_mid, mid)


def test_angles_gains_and_soup_ensemble_terms(checkpoints, tmp_path):
    paths, _ = checkpoints
    sets = make_sets()
    evaluator = CombinationEvaluator(paths, sets, tmp_path / "cache", chunk=4, batch_size=16)
    names = SetNames("H", "I", ("S1", "S2"))
    pairs = compute.pair_accuracies(evaluator, names, count=3).set_index(["model_i", "model_j"])
    assert pairs.loc[("m1", "m2"), "angle_deg"] == pytest.approx(90.0)  # head weight vs head bias: orthogonal updates
    assert pairs.loc[("m1", "m3"), "angle_deg"] == pytest.approx(0.0, abs=1e-3)  # the same direction
    ends = [evaluator.accuracy([single(i)], "I")[0] for i in (1, 2)]
    assert pairs.loc[("m1", "m2"), "gain_id"] == pytest.approx(evaluator.accuracy([average([1, 2])], "I")[0] - sum(ends) / 2)

    terms = compute.soup_vs_ensemble(evaluator, "I", count=2, alpha=0.5, step=0.1).iloc[0]
    (f1, labels), (f2, _) = (direct_logits(paths[i], sets[1]) for i in (1, 2))
    mid, _ = evaluator.logits([((1, 0.5), (2, 0.5))], "I")[0]
    beta = calibrate_beta(mid, labels)
    assert terms["beta"] == pytest.approx(beta)
    measured = F.cross_entropy(beta * mid.double(), labels) - F.cross_entropy(beta * (f1.double() + f2.double()) / 2, labels)
    assert terms["measured"] == pytest.approx(float(measured), abs=1e-6)
    # θ₁ and θ₂ differ only in the head, and the head is linear in its weights: the soup's logits are the
    # ensemble's, so the measured gap is 0 and the approximation is 0 up to the finite-difference error.
    assert terms["measured"] == pytest.approx(0.0, abs=1e-5)
    assert terms["approximation"] == pytest.approx(0.0, abs=1e-3 * max(1.0, terms["curvature"]))


class FakeEvaluator:
    """Held-out accuracies for a constructed greedy case."""

    table = {(1,): 0.9, (2,): 0.8, (3,): 0.7, (1, 2): 0.9, (1, 3): 0.95, (1, 2, 3): 1.0}

    def accuracy(self, combinations, set_name):
        return [self.table[tuple(sorted(i for i, _ in c))] for c in combinations]


def test_greedy_is_strict_and_sorted_by_heldout():
    # Sorted: 1 (.9), 2 (.8), 3 (.7). Adding 2 gives .9: not > .9, rejected. Adding 3 gives .95: accepted.
    assert compute.greedy_indices(FakeEvaluator(), [3, 2, 1], "H") == [1, 3]


def test_checkpoint_figures_end_to_end(checkpoints, tmp_path, monkeypatch):
    paths, _ = checkpoints
    monkeypatch.setattr(compute, "eval_sets", lambda data_cfg, transform: make_sets())
    cfg = OmegaConf.create(
        {
            "device": "cpu",
            "data": {"batch_size": 16, "workers": 0},
            "plots": {
                "init": None,
                "models": None,
                "max_models": 3,
                "grid": 3,
                "margin": 0.2,
                "alpha": 0.5,
                "fd_step": 0.1,
                "approx_set": "id",
                "subset_sizes": [1, 2, 8],
                "subset_seeds": 2,
                "chunk": 4,
                "max_examples": 30,
                "cache": str(tmp_path / "cache"),
                "formats": ["png"],
            },
        }
    )
    rows = [
        {"model_id": f"m{i}", "kind": "zeroshot" if i == 0 else "individual", "checkpoint": {"path": p}, "heldout": 1.0 - i / 10}
        for i, p in enumerate(paths)
    ]
    records = pd.DataFrame(rows)
    models = records.set_index("model_id")[["kind", "heldout"]]
    compute.checkpoint_figures(cfg, records, models, SetNames("H", "I", ("S1", "S2")), tmp_path, wanted("checkpoints"))
    for name in ("fig2_soup_size", "fig3_error_landscape", "fig4_angle_gain", "fig5_soup_vs_ensemble"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    summary = json.loads((tmp_path / "checkpoint_figures.json").read_text())
    assert summary["init"] == paths[0] and summary["models"] == paths[1:]  # best held-out first
    assert summary["approx"]["pairs"] == 3 and 0.0 <= summary["approx"]["sign_agreement"] <= 1.0
    landscape = json.loads((tmp_path / "fig3_error_landscape.json").read_text())
    errors = [e for row in landscape["errors"]["Test error, I (id)"] for e in row]
    assert len(landscape["x"]) == 3 and all(0 <= e <= 100 and abs(e * 30 / 100 - round(e * 30 / 100)) < 1e-6 for e in errors)  # 30 images
    sizes = pd.read_csv(tmp_path / "fig2_soup_size.csv")
    assert sorted(sizes["size"].unique()) == [1, 2, 4]  # 8 is capped at the 4 fine-tuned models
    assert (sizes.loc[sizes["size"] == 4, "seed"] == 0).all()  # the full set has one subset only
    assert not math.isnan(sizes["avg_shifts"].iloc[0])


def test_subsample_is_evenly_spaced_and_optional():
    eval_set = EvalSet("I", "id", TensorDataset(torch.arange(10)), ["a"])
    assert [int(x[0]) for x in compute.subsample(eval_set, 4).dataset] == [0, 3, 6, 9]
    assert compute.subsample(eval_set, None) is eval_set and compute.subsample(eval_set, 10) is eval_set


def test_summary_paths_are_relative_below_the_working_directory(tmp_path, monkeypatch):
    _portable = compute._portable
    monkeypatch.chdir(tmp_path)
    assert _portable(str(tmp_path / "runs" / "demo" / "model.safetensors")) == "runs/demo/model.safetensors"
    assert _portable("runs/x.safetensors") == "runs/x.safetensors"
    assert _portable("/elsewhere/x.safetensors") == "/elsewhere/x.safetensors"
