"""Experiments as data: `python -m pipeline` reads each experiment's steps from the `pipeline:` key of
conf/experiment/<name>.yaml, and builds exactly the commands the hard-coded sequences built before."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
from conftest import run_in_process

import pipeline.__main__ as pipeline_main
from models.cli import CONF_DIR
from models.errors import UserError
from pipeline.steps import experiment_steps, seeds_steps

# Captured from commit cc12bca (pipeline/steps.py with each experiment's steps in `if experiment == ...`
# branches): (name, estimate_s, command) of every step, for every experiment and the calls below. The demo's
# since: WiSE-FT in its own step (5 values of alpha) and the estimates of a fresh-clone run (8:05). Every experiment's
# soups since issue 26: Model Stock in its own step from the LP init (no θ0 among its ingredients), WiSE-FT from the
# zero-shot model to the best individual and to the greedy soup.
CAPTURED = {
    "demo": [
        ("world, foundation and zero-shot table", 11, "python -m datasets.world experiment=demo"),
        (
            "zero-shot and LP inits",
            15,
            "python -m finetune -m experiment=demo finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/demo/inits 'hydra.sweep.subdir=${finetune.init}'",
        ),
        ("fine-tuning sweep", 139, "python -m finetune -m experiment=demo sweep=demo finetune.threads=null"),
        (
            "eval of the inits and every fine-tuned model",
            111,
            "python -m eval experiment=demo 'checkpoints=[runs/demo/inits,runs/demo/finetune]' run_name=individuals",
        ),
        (
            "soups and ensembles (+ their eval)",
            80,
            "python -m soups -m experiment=demo soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble ingredients=runs/demo/finetune",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            10,
            "python -m soups experiment=demo soup=model_stock soup.init=runs/demo/inits/lp/model.safetensors ingredients=runs/demo/finetune",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            25,
            "python -m soups experiment=demo soup=wise_ft 'soup.alphas=[0.0,0.25,0.5,0.75,1.0]' soup.init=runs/demo/inits/zeroshot/model.safetensors ingredients=runs/demo/finetune soup.endpoint=best run_name=wise_ft_best",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            25,
            "python -m soups experiment=demo soup=wise_ft 'soup.alphas=[0.0,0.25,0.5,0.75,1.0]' soup.init=runs/demo/inits/zeroshot/model.safetensors ingredients=runs/demo/soups/greedy_soup run_name=wise_ft_greedy",
        ),
        ("tables and figures from the records", 21, "python -m plots experiment=demo results=runs/demo out=results/demo"),
        (
            "figures from checkpoints (landscape, angles, soup vs ensemble)",
            52,
            "python -m plots experiment=demo results=runs/demo figure=checkpoints out=results/demo",
        ),
    ],
    "demo_user": [
        ("world, foundation and zero-shot table", 11, "python -m datasets.world experiment=demo"),
        (
            "zero-shot and LP inits",
            15,
            "python -m finetune -m experiment=demo finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/x/inits 'hydra.sweep.subdir=${finetune.init}' name=x finetune.lr=1e-3",
        ),
        (
            "fine-tuning sweep",
            139,
            "python -m finetune -m experiment=demo sweep=paper_random finetune.threads=null name=x finetune.lr=1e-3",
        ),
        (
            "eval of the inits and every fine-tuned model",
            111,
            "python -m eval experiment=demo 'checkpoints=[runs/x/inits,runs/x/finetune]' run_name=individuals name=x finetune.lr=1e-3",
        ),
        (
            "soups and ensembles (+ their eval)",
            80,
            "python -m soups -m experiment=demo soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble ingredients=runs/x/finetune name=x finetune.lr=1e-3",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            10,
            "python -m soups experiment=demo soup=model_stock soup.init=runs/x/inits/lp/model.safetensors ingredients=runs/x/finetune name=x finetune.lr=1e-3",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            25,
            "python -m soups experiment=demo soup=wise_ft 'soup.alphas=[0.0,0.25,0.5,0.75,1.0]' soup.init=runs/x/inits/zeroshot/model.safetensors ingredients=runs/x/finetune soup.endpoint=best run_name=wise_ft_best name=x finetune.lr=1e-3",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            25,
            "python -m soups experiment=demo soup=wise_ft 'soup.alphas=[0.0,0.25,0.5,0.75,1.0]' soup.init=runs/x/inits/zeroshot/model.safetensors ingredients=runs/x/soups/greedy_soup run_name=wise_ft_greedy name=x finetune.lr=1e-3",
        ),
        (
            "tables and figures from the records",
            21,
            "python -m plots experiment=demo results=runs/x out=results/demo name=x finetune.lr=1e-3",
        ),
        (
            "figures from checkpoints (landscape, angles, soup vs ensemble)",
            52,
            "python -m plots experiment=demo results=runs/x figure=checkpoints out=results/demo name=x finetune.lr=1e-3",
        ),
    ],
    "demo_seed1": [
        ("world, foundation and zero-shot table", 11, "python -m datasets.world experiment=demo"),
        (
            "zero-shot and LP inits",
            15,
            "python -m finetune -m experiment=demo finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/demo_seeds/seed1/demo/inits 'hydra.sweep.subdir=${finetune.init}' paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "fine-tuning sweep",
            139,
            "python -m finetune -m experiment=demo sweep=demo sweep.seed=1 finetune.threads=null paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "eval of the inits and every fine-tuned model",
            111,
            "python -m eval experiment=demo 'checkpoints=[runs/demo_seeds/seed1/demo/inits,runs/demo_seeds/seed1/demo/finetune]' run_name=individuals paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "soups and ensembles (+ their eval)",
            80,
            "python -m soups -m experiment=demo soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble ingredients=runs/demo_seeds/seed1/demo/finetune paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            10,
            "python -m soups experiment=demo soup=model_stock soup.init=runs/demo_seeds/seed1/demo/inits/lp/model.safetensors ingredients=runs/demo_seeds/seed1/demo/finetune paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            25,
            "python -m soups experiment=demo soup=wise_ft 'soup.alphas=[0.0,0.25,0.5,0.75,1.0]' soup.init=runs/demo_seeds/seed1/demo/inits/zeroshot/model.safetensors ingredients=runs/demo_seeds/seed1/demo/finetune soup.endpoint=best run_name=wise_ft_best paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            25,
            "python -m soups experiment=demo soup=wise_ft 'soup.alphas=[0.0,0.25,0.5,0.75,1.0]' soup.init=runs/demo_seeds/seed1/demo/inits/zeroshot/model.safetensors ingredients=runs/demo_seeds/seed1/demo/soups/greedy_soup run_name=wise_ft_greedy paths.runs=runs/demo_seeds/seed1",
        ),
        (
            "tables and figures from the records",
            21,
            "python -m plots experiment=demo results=runs/demo_seeds/seed1/demo out=runs/demo_seeds/seed1/results paths.runs=runs/demo_seeds/seed1",
        ),
    ],
    "paper_vitb32": [
        (
            "zero-shot and LP inits",
            3600,
            "python -m finetune -m experiment=paper_vitb32 finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/paper_vitb32/inits 'hydra.sweep.subdir=${finetune.init}' hydra/launcher=slurm",
        ),
        ("fine-tuning sweep", 259200, "python -m finetune -m experiment=paper_vitb32 sweep=paper_random hydra/launcher=slurm"),
        (
            "eval of the inits and every fine-tuned model",
            3600,
            "python -m eval -m experiment=paper_vitb32 'checkpoints=[runs/paper_vitb32/inits,runs/paper_vitb32/finetune]' run_name=individuals hydra/launcher=slurm",
        ),
        (
            "soups and ensembles (+ their eval)",
            7200,
            "python -m soups -m experiment=paper_vitb32 soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble 'ingredients=[runs/paper_vitb32/inits/lp,runs/paper_vitb32/finetune]' hydra/launcher=slurm",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            600,
            "python -m soups -m experiment=paper_vitb32 soup=model_stock soup.init=runs/paper_vitb32/inits/lp/model.safetensors ingredients=runs/paper_vitb32/finetune hydra/launcher=slurm",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            1800,
            "python -m soups -m experiment=paper_vitb32 soup=wise_ft soup.init=runs/paper_vitb32/inits/zeroshot/model.safetensors ingredients=runs/paper_vitb32/finetune soup.endpoint=best run_name=wise_ft_best hydra/launcher=slurm",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            1800,
            "python -m soups -m experiment=paper_vitb32 soup=wise_ft soup.init=runs/paper_vitb32/inits/zeroshot/model.safetensors ingredients=runs/paper_vitb32/soups/greedy_soup run_name=wise_ft_greedy hydra/launcher=slurm",
        ),
        (
            "tables and figures from the records",
            60,
            "python -m plots experiment=paper_vitb32 results=runs/paper_vitb32 out=results/paper_vitb32",
        ),
        (
            "figures from checkpoints (landscape, angles, soup vs ensemble)",
            3600,
            "python -m plots experiment=paper_vitb32 results=runs/paper_vitb32 figure=checkpoints out=results/paper_vitb32",
        ),
    ],
    "paper_vitb32_elsewhere": [
        (
            "zero-shot and LP inits",
            3600,
            "python -m finetune -m experiment=paper_vitb32 finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=/abs/runs/n/inits 'hydra.sweep.subdir=${finetune.init}' hydra/launcher=slurm name=n",
        ),
        ("fine-tuning sweep", 259200, "python -m finetune -m experiment=paper_vitb32 sweep=paper_grid hydra/launcher=slurm name=n"),
        (
            "eval of the inits and every fine-tuned model",
            3600,
            "python -m eval -m experiment=paper_vitb32 'checkpoints=[/abs/runs/n/inits,/abs/runs/n/finetune]' run_name=individuals hydra/launcher=slurm name=n",
        ),
        (
            "soups and ensembles (+ their eval)",
            7200,
            "python -m soups -m experiment=paper_vitb32 soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble 'ingredients=[/abs/runs/n/inits/lp,/abs/runs/n/finetune]' hydra/launcher=slurm name=n",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            600,
            "python -m soups -m experiment=paper_vitb32 soup=model_stock soup.init=/abs/runs/n/inits/lp/model.safetensors ingredients=/abs/runs/n/finetune hydra/launcher=slurm name=n",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            1800,
            "python -m soups -m experiment=paper_vitb32 soup=wise_ft soup.init=/abs/runs/n/inits/zeroshot/model.safetensors ingredients=/abs/runs/n/finetune soup.endpoint=best run_name=wise_ft_best hydra/launcher=slurm name=n",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            1800,
            "python -m soups -m experiment=paper_vitb32 soup=wise_ft soup.init=/abs/runs/n/inits/zeroshot/model.safetensors ingredients=/abs/runs/n/soups/greedy_soup run_name=wise_ft_greedy hydra/launcher=slurm name=n",
        ),
        (
            "tables and figures from the records",
            60,
            "python -m plots experiment=paper_vitb32 results=/abs/runs/n out=results/paper_vitb32 name=n",
        ),
        (
            "figures from checkpoints (landscape, angles, soup vs ensemble)",
            3600,
            "python -m plots experiment=paper_vitb32 results=/abs/runs/n figure=checkpoints out=results/paper_vitb32 name=n",
        ),
    ],
    "paper_vitb32_dryrun": [
        ("miniature ImageNet-layout data", 15, "python -m datasets.imagenet_miniature .cache/imagenet_miniature"),
        (
            "zero-shot and LP inits",
            25,
            "python -m finetune -m experiment=paper_vitb32_dryrun finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/paper_vitb32_dryrun/inits 'hydra.sweep.subdir=${finetune.init}'",
        ),
        ("fine-tuning sweep", 90, "python -m finetune -m experiment=paper_vitb32_dryrun sweep=paper_random"),
        (
            "eval of the inits and every fine-tuned model",
            30,
            "python -m eval experiment=paper_vitb32_dryrun 'checkpoints=[runs/paper_vitb32_dryrun/inits,runs/paper_vitb32_dryrun/finetune]' run_name=individuals",
        ),
        (
            "soups and ensembles (+ their eval)",
            100,
            "python -m soups -m experiment=paper_vitb32_dryrun soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble 'ingredients=[runs/paper_vitb32_dryrun/inits/lp,runs/paper_vitb32_dryrun/finetune]'",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            10,
            "python -m soups -m experiment=paper_vitb32_dryrun soup=model_stock soup.init=runs/paper_vitb32_dryrun/inits/lp/model.safetensors ingredients=runs/paper_vitb32_dryrun/finetune",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            15,
            "python -m soups -m experiment=paper_vitb32_dryrun soup=wise_ft soup.init=runs/paper_vitb32_dryrun/inits/zeroshot/model.safetensors ingredients=runs/paper_vitb32_dryrun/finetune soup.endpoint=best run_name=wise_ft_best",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            15,
            "python -m soups -m experiment=paper_vitb32_dryrun soup=wise_ft soup.init=runs/paper_vitb32_dryrun/inits/zeroshot/model.safetensors ingredients=runs/paper_vitb32_dryrun/soups/greedy_soup run_name=wise_ft_greedy",
        ),
        ("tables and figures from the records", 15, "python -m plots experiment=paper_vitb32_dryrun results=runs/paper_vitb32_dryrun"),
        (
            "figures from checkpoints (landscape, angles, soup vs ensemble)",
            60,
            "python -m plots experiment=paper_vitb32_dryrun results=runs/paper_vitb32_dryrun figure=checkpoints",
        ),
    ],
    "folder": [
        ("check the dataset folder, draw its held-out split", 5, "python -m datasets.folder experiment=folder data.root=/data/mine"),
        (
            "zero-shot and LP inits",
            15,
            "python -m finetune -m experiment=folder finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/folder/inits 'hydra.sweep.subdir=${finetune.init}' data.root=/data/mine",
        ),
        ("fine-tuning sweep", 60, "python -m finetune -m experiment=folder sweep=demo finetune.threads=null data.root=/data/mine"),
        (
            "eval of the inits and every fine-tuned model",
            20,
            "python -m eval experiment=folder 'checkpoints=[runs/folder/inits,runs/folder/finetune]' run_name=individuals data.root=/data/mine",
        ),
        (
            "soups and ensembles (+ their eval)",
            70,
            "python -m soups -m experiment=folder soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble ingredients=runs/folder/finetune data.root=/data/mine",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            5,
            "python -m soups -m experiment=folder soup=model_stock soup.init=runs/folder/inits/lp/model.safetensors ingredients=runs/folder/finetune data.root=/data/mine",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            10,
            "python -m soups -m experiment=folder soup=wise_ft soup.init=runs/folder/inits/zeroshot/model.safetensors ingredients=runs/folder/finetune soup.endpoint=best run_name=wise_ft_best data.root=/data/mine",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            10,
            "python -m soups -m experiment=folder soup=wise_ft soup.init=runs/folder/inits/zeroshot/model.safetensors ingredients=runs/folder/soups/greedy_soup run_name=wise_ft_greedy data.root=/data/mine",
        ),
        ("tables and figures from the records", 10, "python -m plots experiment=folder results=runs/folder data.root=/data/mine"),
        (
            "basin check of the LP init and the sweep",
            10,
            "python -m soups diagnose experiment=folder 'ingredients=[runs/folder/inits/lp,runs/folder/finetune]' data.root=/data/mine",
        ),
    ],
    "folder_user": [
        (
            "check the dataset folder, draw its held-out split",
            5,
            "python -m datasets.folder experiment=folder name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "zero-shot and LP inits",
            15,
            "python -m finetune -m experiment=folder finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir=runs/mine/inits 'hydra.sweep.subdir=${finetune.init}' name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "fine-tuning sweep",
            60,
            "python -m finetune -m experiment=folder sweep=paper_random finetune.threads=null name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "eval of the inits and every fine-tuned model",
            20,
            "python -m eval experiment=folder 'checkpoints=[runs/mine/inits,runs/mine/finetune]' run_name=individuals name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "soups and ensembles (+ their eval)",
            70,
            "python -m soups -m experiment=folder soup=uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble ingredients=runs/mine/finetune name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "Model Stock from the LP init (+ its eval)",
            5,
            "python -m soups -m experiment=folder soup=model_stock soup.init=runs/mine/inits/lp/model.safetensors ingredients=runs/mine/finetune name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "WiSE-FT from the zero-shot model to the best individual (+ its eval)",
            10,
            "python -m soups -m experiment=folder soup=wise_ft soup.init=runs/mine/inits/zeroshot/model.safetensors ingredients=runs/mine/finetune soup.endpoint=best run_name=wise_ft_best name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "WiSE-FT from the zero-shot model to the greedy soup (+ its eval)",
            10,
            "python -m soups -m experiment=folder soup=wise_ft soup.init=runs/mine/inits/zeroshot/model.safetensors ingredients=runs/mine/soups/greedy_soup run_name=wise_ft_greedy name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "tables and figures from the records",
            10,
            "python -m plots experiment=folder results=runs/mine name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
        (
            "basin check of the LP init and the sweep",
            10,
            "python -m soups diagnose experiment=folder 'ingredients=[runs/mine/inits/lp,runs/mine/finetune]' name=mine data.root=/data/mine model=vit_b32 sweep.n=2",
        ),
    ],
}


CALLS = {  # how each captured list was made: experiment_steps(**CALLS[key])
    "demo": {"experiment": "demo"},
    "demo_user": {"experiment": "demo", "extra": ["name=x", "finetune.lr=1e-3", "sweep=paper_random"]},
    "demo_seed1": {"experiment": "demo", "sweep_seed": 1},
    "paper_vitb32": {"experiment": "paper_vitb32"},
    "paper_vitb32_elsewhere": {
        "experiment": "paper_vitb32", "runs": "/abs/runs", "cache": "/abs/cache", "extra": ["name=n", "sweep=paper_grid"],
    },
    "paper_vitb32_dryrun": {"experiment": "paper_vitb32_dryrun"},
    "folder": {"experiment": "folder", "extra": ["data.root=/data/mine"]},
    "folder_user": {
        "experiment": "folder", "extra": ["data.root=/data/mine", "name=mine", "model=vit_b32", "sweep=paper_random", "sweep.n=2"],
    },
}  # fmt: skip

# The one intended change (issue 18): the figures from checkpoints go through the launcher like every
# other GPU step, so on the cluster they are a SLURM job (`-m` with no sweep submits one job).
LAUNCHED_FIGURES = {
    "paper_vitb32": (
        "python -m plots experiment=paper_vitb32 results=runs/paper_vitb32 figure=checkpoints out=results/paper_vitb32",
        "python -m plots -m experiment=paper_vitb32 results=runs/paper_vitb32 figure=checkpoints out=results/paper_vitb32"
        " hydra/launcher=slurm",
    ),
    "paper_vitb32_elsewhere": (
        "python -m plots experiment=paper_vitb32 results=/abs/runs/n figure=checkpoints out=results/paper_vitb32 name=n",
        "python -m plots -m experiment=paper_vitb32 results=/abs/runs/n figure=checkpoints out=results/paper_vitb32"
        " hydra/launcher=slurm name=n",
    ),
}


# The intended change of issue 31: a run whose overrides change the outputs writes its tables and figures
# beside its runs, never over the experiment's committed results/<experiment>/.
OWN_RESULTS = {
    "demo_user": ("out=results/demo", "out=runs/x/results"),
    "paper_vitb32_elsewhere": ("out=results/paper_vitb32", "out=/abs/runs/n/results"),
}


def expected(key: str) -> list[tuple[str, float, str]]:
    old, new = LAUNCHED_FIGURES.get(key, (None, None))
    moved = OWN_RESULTS.get(key, ("", ""))
    return [(name, estimate, (new if command == old else command).replace(*moved)) for name, estimate, command in CAPTURED[key]]


def listed(steps) -> list[tuple[str, float, str]]:
    return [(s.name, s.estimate_s, shlex.join(s.argv)) for s in steps]


@pytest.mark.parametrize("key", sorted(CAPTURED))
def test_every_experiment_builds_the_commands_the_hard_coded_sequences_built(key):
    assert listed(experiment_steps(**CALLS[key])) == expected(key)


def test_the_figures_from_checkpoints_go_through_the_launcher():
    old, new = LAUNCHED_FIGURES["paper_vitb32"]
    assert old in [command for _, _, command in CAPTURED["paper_vitb32"]]  # the change is to a captured command
    assert new in [command for _, _, command in listed(experiment_steps("paper_vitb32"))]


def test_seeds_run_the_plain_demo_then_each_seed_then_the_summary():
    seed2 = [(name, estimate, command.replace("seed1", "seed2").replace("sweep.seed=1", "sweep.seed=2"))
             for name, estimate, command in CAPTURED["demo_seed1"]]  # fmt: skip
    want = [(f"seed {seed}: {name}", estimate, command) for seed, steps in ((0, CAPTURED["demo"]), (1, CAPTURED["demo_seed1"]), (2, seed2))
            for name, estimate, command in steps]  # fmt: skip
    want.append((
        "mean and sd of each finding over the seeds", 5,
        "python -m plots.seeds results/demo/findings.json runs/demo_seeds/seed1/results/findings.json"
        " runs/demo_seeds/seed2/results/findings.json --out=results/demo_seeds",
    ))  # fmt: skip
    assert listed(seeds_steps("demo", [0, 1, 2])) == want


NEW_EXPERIMENT = """\
# @package _global_
name: seeds_summary
pipeline:
  steps:
    - name: mean and sd of two seeds' findings
      module: plots.seeds
      args: ["${paths.runs}/a.json", "${paths.runs}/b.json", "--out=${paths.runs}/${name}/summary"]
      overrides: false
      estimate_s: 2
"""


@pytest.fixture
def conf_copy(tmp_path, monkeypatch):
    """A copy of conf/ that the pipeline reads instead (a user's own experiments dropped into it)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    monkeypatch.setattr("pipeline.steps.CONF_DIR", conf)
    return conf


def test_a_new_experiment_is_a_yaml_file(conf_copy, tmp_path, monkeypatch, capsys):
    (conf_copy / "experiment/seeds_summary.yaml").write_text(NEW_EXPERIMENT)
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, delta in (("a", 1.0), ("b", 3.0)):  # one finding, +1 pp in one seed and +3 pp in the other
        findings = [{"name": "g", "metric": "top1_id", "delta_pp": delta, "holds": delta > 2}]  # findings.json's form
        (runs / f"{seed}.json").write_text(json.dumps(findings))
    monkeypatch.setenv("MODEL_SOUPS_RUNS", str(runs))
    assert pipeline_main.main(["seeds_summary", "--print"]) == 0
    command = f"python -m plots.seeds {runs}/a.json {runs}/b.json --out={runs}/seeds_summary/summary"
    assert command in capsys.readouterr().out.splitlines()
    assert pipeline_main.main(["seeds_summary"]) == 0
    summary = json.loads((runs / "seeds_summary/summary/findings_seeds.json").read_text())["findings"][0]
    assert summary["mean_pp"] == 2.0 and summary["sd_pp"] == pytest.approx(2**0.5, abs=1e-3) and summary["held"] == 1
    timings = json.loads((runs / "seeds_summary/pipeline_timings.json").read_text())
    assert list(timings) == ["mean and sd of two seeds' findings"]


SHARED = """\
# @package _global_
name: mine
pipeline:
  sweep: demo
  results: results/mine
  launcher: [hydra/launcher=slurm]
  steps:
    - use: inits
      estimate_s: 3
    - use: individuals
      name: eval here
      launch: false
"""
INITS = "python -m finetune -m experiment=mine finetune.epochs=0 finetune.init=zeroshot,lp hydra.sweep.dir={runs}/mine/inits 'hydra.sweep.subdir=${{finetune.init}}'"


def test_a_shared_step_takes_the_experiments_name_and_its_own_fields(conf_copy):
    (conf_copy / "experiment/mine.yaml").write_text(SHARED)
    assert listed(experiment_steps("mine")) == [
        ("zero-shot and LP inits", 3, INITS.format(runs="runs") + " hydra/launcher=slurm"),
        ("eval here", 60.0, "python -m eval experiment=mine 'checkpoints=[runs/mine/inits,runs/mine/finetune]' run_name=individuals"),
    ]


def test_seeds_of_another_experiment_go_to_its_own_folders(conf_copy):
    (conf_copy / "experiment/mine.yaml").write_text(SHARED.replace("  launcher: [hydra/launcher=slurm]\n", ""))
    seed1 = "runs/mine_seeds/seed1"
    assert listed(seeds_steps("mine", [0, 1]))[::2] == [
        ("seed 0: zero-shot and LP inits", 3, INITS.format(runs="runs")),
        ("seed 1: zero-shot and LP inits", 3, INITS.format(runs=f"{seed1}") + f" paths.runs={seed1}"),
        (
            "mean and sd of each finding over the seeds",
            5,
            f"python -m plots.seeds results/mine/findings.json {seed1}/results/findings.json --out=results/mine_seeds",
        ),
    ]


STEP = {"name": "s", "module": "plots", "args": ["figure=table"]}


@pytest.mark.parametrize(
    "pipeline,message",
    [
        ({"steps": [{k: v for k, v in STEP.items() if k != "module"}]}, "pipeline.steps[0]: missing field 'module'"),
        ({"steps": [{**STEP, "stage": "plots"}]}, "pipeline.steps[0]: unknown field 'stage'"),
        ({"steps": [STEP, {**STEP, "args": "figure=table"}]}, "pipeline.steps[1].args: 'figure=table' is not a list[str]"),
        ({"steps": [{**STEP, "args": [["a"]]}]}, "pipeline.steps[0].args: every argument must be a string"),
        ({"steps": [{**STEP, "launch": "yes"}]}, "pipeline.steps[0].launch: 'yes' is not a bool"),
        ({"steps": [{**STEP, "estimate_s": True}]}, "pipeline.steps[0].estimate_s: True is not a float"),
        ({"steps": ["python -m plots"]}, "pipeline.steps[0]: a step is a mapping"),
        (
            {"steps": [STEP, {"use": "nope"}]},
            "pipeline.steps[1].use: unknown shared step 'nope' (pipeline/steps.py has inits, individuals)",
        ),
        ({"steps": []}, "pipeline.steps: a list of steps is needed"),
        ({"step": [STEP]}, "pipeline: unknown key 'step'"),
        ([STEP], "pipeline: a mapping with steps: [...] is needed"),
        ({"steps": [{**STEP, "args": ["out=${pipeline.nowhere}"]}]}, "pipeline: "),
    ],
)
def test_a_malformed_pipeline_is_one_line_naming_the_field(conf_copy, capsys, pipeline, message):
    (conf_copy / "experiment/bad.yaml").write_text("# @package _global_\n" + json.dumps({"pipeline": pipeline}))
    assert pipeline_main.main(["bad", "--print"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: conf/experiment/bad.yaml: {message}") and err.count("\n") == 1, err
    with pytest.raises(UserError):
        experiment_steps("bad")


def test_an_unknown_experiment_is_one_line_listing_the_known_ones():
    result = run_in_process("pipeline", "no_such_experiment")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "error: unknown experiment 'no_such_experiment'; choose from demo, folder, paper_transfer, paper_vitb32,"
    )
    seeds = run_in_process("pipeline", "demo", "name=x", "--seeds", "0", "1", "--print")
    assert seeds.returncode == 2 and seeds.stderr == "error: --seeds runs the plain demo once per seed; it takes no overrides (name=x)\n"


def test_seeds_need_an_experiment_whose_findings_have_a_home(capsys):
    # the dry run keeps its tables in its runs folder (no pipeline.results): no seed-0 findings.json to summarise
    assert pipeline_main.main(["paper_vitb32_dryrun", "--seeds", "0", "1", "--print"]) == 2
    assert capsys.readouterr().err == (
        "error: --seeds: the paper_vitb32_dryrun experiment needs pipeline.sweep and pipeline.results"
        " (conf/experiment/paper_vitb32_dryrun.yaml)\n"
    )


def test_a_run_folder_does_not_depend_on_the_pipeline_steps():
    from hydra import compose, initialize_config_dir

    from models.cli import identity_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["experiment=demo"])
    assert cfg.pipeline.steps[0].module == "datasets.world"  # every stage sees it; none is named by it
    assert "pipeline" not in identity_config(cfg)
