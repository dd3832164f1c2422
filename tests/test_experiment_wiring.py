"""The experiments draw Model Stock and WiSE-FT as their references define them (issue 26).

Model Stock merges the fine-tunes towards θ0 = the LP init they start from, never counting θ0 among its
ingredients; WiSE-FT interpolates from the zero-shot model (the WiSE-FT reference), to the best individual
and to the greedy soup. The dry run's own soups steps run here on hand-made checkpoints of its model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_in_process
from safetensors.torch import load_file

from models.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from models.classifier import classifier_from_clip
from models.factory import activation_of, create_clip
from pipeline.steps import experiment_steps

DRY = "paper_vitb32_dryrun"


def soups_steps(experiment: str, runs: str = "runs") -> dict[str, tuple[str, ...]]:
    """The soups steps of an experiment by their soup method (or run name for WiSE-FT), argv after the module."""
    found = {}
    for step in experiment_steps(experiment, runs):
        if step.argv[2] != "soups":
            continue
        args = tuple(a for a in step.argv[3:] if a != "-m" and not a.startswith("hydra/launcher="))
        method = next(a.removeprefix("soup=") for a in args if a.startswith("soup="))
        run = next((a.removeprefix("run_name=") for a in args if a.startswith("run_name=")), method)
        found[run if method == "wise_ft" else method] = args
    return found


@pytest.mark.parametrize("experiment", ["paper_vitb32", DRY, "demo"])
def test_model_stock_and_wise_ft_are_wired_as_their_references(experiment):
    steps = soups_steps(experiment)
    runs = f"runs/{experiment}"
    stock = steps["model_stock"]
    assert f"soup.init={runs}/inits/lp/model.safetensors" in stock and f"ingredients={runs}/finetune" in stock
    assert not any("inits/lp" in a for a in stock if a.startswith("ingredients="))  # θ0 is no ingredient
    for run, endpoint in (("wise_ft_best", f"ingredients={runs}/finetune"), ("wise_ft_greedy", f"ingredients={runs}/soups/greedy_soup")):
        assert f"soup.init={runs}/inits/zeroshot/model.safetensors" in steps[run] and endpoint in steps[run]
    assert "soup.endpoint=best" in steps["wise_ft_best"]


def tiny_checkpoint(path, state, kind: str, meta_from: CheckpointMeta) -> None:
    save_checkpoint(path, state, CheckpointMeta(**{**meta_from.__dict__, "kind": kind}))
    (path.parent / "DONE").write_text("")


def test_the_dry_runs_model_stock_and_wise_ft_steps(tmp_path):
    """Hand-made checkpoints of the dry run's model in its runs layout: the LP init, two fine-tunes from it
    and a greedy soup; the dry run's steps (without evaluation) must give a Model Stock that is not θ0 and
    equals the one computed without θ0 among the ingredients, and WiSE-FT at α = 0 equal to the zero-shot model."""
    torch.manual_seed(0)
    clip, _, _ = create_clip("ViT-Tiny-BPE", None)
    zeroshot = classifier_from_clip(clip, torch.randn(1000, clip.visual.output_dim)).state_dict()
    meta = CheckpointMeta("ViT-Tiny-BPE", None, 1000, "imagenet1k", "zeroshot", activation=activation_of(clip.visual))
    base = tmp_path / "runs" / DRY
    lp = {k: v + 0.01 * torch.randn_like(v) if k.startswith("head.") else v.clone() for k, v in zeroshot.items()}
    tunes = [{k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in lp.items()} for _ in range(2)]
    tiny_checkpoint(base / "inits/zeroshot/model.safetensors", zeroshot, "zeroshot", meta)
    tiny_checkpoint(base / "inits/lp/model.safetensors", lp, "lp", meta)
    for i, tune in enumerate(tunes, start=1):
        tiny_checkpoint(base / f"finetune/model_{i}/model.safetensors", tune, "individual", meta)
    greedy = {k: (tunes[0][k] + tunes[1][k]) / 2 if v.is_floating_point() else v for k, v in lp.items()}
    tiny_checkpoint(base / "soups/greedy_soup/model.safetensors", greedy, "soup", meta)
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache")}
    steps = soups_steps(DRY, str(tmp_path / "runs"))

    done = run_in_process("soups", *steps["model_stock"], "soup.evaluate=false", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    stock = load_file(str(base / "soups/model_stock/model.safetensors"))
    assert any(not torch.equal(stock[k], lp[k]) for k in stock if stock[k].is_floating_point())  # not θ0
    assert read_meta(base / "soups/model_stock/model.safetensors").hparams["dropped_theta0"] == 0
    # the paper's soups' ingredients (the LP init among them) give the same Model Stock: θ0 is dropped, not counted
    with_theta0 = [a for a in steps["model_stock"] if not a.startswith("ingredients=")]
    with_theta0 += [f"ingredients=[{base}/inits/lp,{base}/finetune]", "run_name=model_stock_theta0"]
    done = run_in_process("soups", *with_theta0, "soup.evaluate=false", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    again = load_file(str(base / "soups/model_stock_theta0/model.safetensors"))
    assert all(torch.equal(stock[k], again[k]) for k in stock)
    assert read_meta(base / "soups/model_stock_theta0/model.safetensors").hparams["dropped_theta0"] == 1

    done = run_in_process("soups", *steps["wise_ft_greedy"], "soup.evaluate=false", "soup.alpha=0.0", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    wise = load_file(str(base / "soups/wise_ft_greedy/model.safetensors"))
    assert all(torch.equal(wise[k], zeroshot[k]) for k in zeroshot)  # α = 0 is the zero-shot model
    hparams = read_meta(base / "soups/wise_ft_greedy/model.safetensors").hparams
    assert hparams["wise_ft_from"] == str(base / "inits/zeroshot/model.safetensors")
    assert hparams["wise_ft_to"] == str(base / "soups/greedy_soup/model.safetensors")
