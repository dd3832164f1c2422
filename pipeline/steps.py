"""The documented sequence of stage commands for each experiment.

Each step is a plain stage command line (what a user would type), so `python -m pipeline NAME --print`
is also the cluster guide. `estimate_s` is the duration measured on a 2-core CPU, used for the time
left until this machine has timed the step itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

EXPERIMENTS = ("demo", "paper_vitb32", "paper_vitb32_dryrun", "folder")

SOUPS = "uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble,wise_ft,model_stock"


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    estimate_s: float = 60.0


def _py(*args: str) -> tuple[str, ...]:
    return ("python", "-m", *args)


DEMO_SWEEP_SEED = 0  # conf/sweep/demo.yaml's seed
SEEDS_DIR = "demo_seeds"  # runs/<SEEDS_DIR>/seed<S>/ holds another sweep seed's runs; results/<SEEDS_DIR>/ the summary


def split_overrides(extra: Sequence[str]) -> tuple[str | None, str | None, list[str]]:
    """(name=..., sweep=..., the rest) of a user's overrides: the name moves the run folders, a sweep
    choice applies to the sweep step only, the rest goes to every stage."""
    name = sweep = None
    rest = []
    for arg in extra:
        if arg.startswith("name="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("sweep="):
            sweep = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return name, sweep, rest


def experiment_steps(
    experiment: str, runs: str = "runs", cache: str = ".cache", extra: Sequence[str] = (), sweep_seed: int | None = None
) -> list[Step]:
    """The steps of `experiment`; `runs` and `cache` are the folders paths.runs and paths.cache point to;
    `extra` are overrides passed to every stage (`name=` and `sweep=` see `split_overrides`).

    With `sweep_seed`, the random search is drawn with that seed into its own runs folder
    (`runs/demo_seeds/seed<S>`), whose tables and findings go to its `results/` (the figures from
    checkpoints are left out): the input of the seeds summary (`seeds_steps`)."""
    if experiment not in EXPERIMENTS:
        raise KeyError(experiment)
    name, sweep_choice, rest = split_overrides(extra)
    if experiment == "folder" and not any(a.startswith("data.root=") for a in rest):
        raise KeyError("the folder experiment needs data.root=ROOT (your dataset's folder)")
    exp = f"experiment={experiment}"
    relocate: tuple[str, ...] = ()
    if sweep_seed is not None:
        runs = f"{runs}/{SEEDS_DIR}/seed{sweep_seed}"
        relocate = (f"paths.runs={runs}",)
    base = f"{runs}/{name or experiment}"
    inits, sweep = f"{base}/inits", f"{base}/finetune"
    # The fine-tunes start from the LP init (the paper's model_0), so it is θ0 for WiSE-FT and Model Stock.
    lp_init = f"{inits}/lp/model.safetensors"
    # The official soups are over all 72 released models: the LP init (model_0) and the 71 fine-tunes.
    ingredients = sweep if experiment in ("demo", "folder") else f"[{inits}/lp,{sweep}]"
    # On the cluster every GPU step goes through SLURM: `-m` with no sweep submits a single job.
    launcher = ("hydra/launcher=slurm",) if experiment == "paper_vitb32" else ()
    multirun = ("-m",) if launcher else ()
    sweep_name = sweep_choice or ("demo" if experiment in ("demo", "folder") else "paper_random")
    # The demo's jobs run one after another (basic launcher), so each may use every core.
    threads = ("finetune.threads=null",) if experiment in ("demo", "folder") else ()
    # Tables and figures of the committed experiments go to results/<experiment>/; the dry run and your dataset keep their own.
    out = () if experiment in ("paper_vitb32_dryrun", "folder") else (f"out=results/{experiment}",)
    if sweep_seed is not None:
        out = (f"out={runs}/results",)
    seed = (f"sweep.seed={sweep_seed}",) if sweep_seed is not None else ()
    timed = {  # measured seconds on 2 CPU cores (demo, dry run); the paper's run is GPU-hours (docs/experiments.md)
        "demo": (12, 14, 102, 57, 160, 3, 95),  # a clean `make demo`, 7:23 in all
        "paper_vitb32_dryrun": (15, 25, 90, 30, 120, 15, 60),
        "paper_vitb32": (0, 3600, 72 * 3600, 3600, 7200, 60, 3600),
        "folder": (5, 15, 60, 20, 90, 10, 10),  # a few hundred images with the tiny CLIP
    }[experiment]
    # Every stage gets the user's overrides (data.root=..., model=..., name=...) after the step's own.
    user = (*([f"name={name}"] if name else []), *rest)
    steps = []
    if experiment == "demo":
        steps.append(Step("world, foundation and zero-shot table", _py("datasets.world", exp), timed[0]))
    elif experiment == "paper_vitb32_dryrun":
        steps.append(Step("miniature ImageNet-layout data", _py("datasets.imagenet_miniature", f"{cache}/imagenet_miniature"), timed[0]))
    elif experiment == "folder":
        steps.append(Step("check the dataset folder, draw its held-out split", _py("datasets.folder", exp, *user), timed[0]))
    steps += [
        Step(
            "zero-shot and LP inits",
            _py(
                "finetune",
                "-m",
                exp,
                "finetune.epochs=0",
                "finetune.init=zeroshot,lp",
                f"hydra.sweep.dir={inits}",
                "hydra.sweep.subdir=${finetune.init}",
                *relocate,
                *launcher,
                *user,
            ),
            timed[1],
        ),
        Step(
            "fine-tuning sweep", _py("finetune", "-m", exp, f"sweep={sweep_name}", *seed, *threads, *relocate, *launcher, *user), timed[2]
        ),
        Step(
            "eval of the inits and every fine-tuned model",
            _py("eval", *multirun, exp, f"checkpoints=[{inits},{sweep}]", "run_name=individuals", *relocate, *launcher, *user),
            timed[3],
        ),
        Step(
            "soups, ensembles, WiSE-FT and Model Stock (+ their eval)",
            _py("soups", "-m", exp, f"soup={SOUPS}", f"ingredients={ingredients}", f"++soup.init={lp_init}", *relocate, *launcher, *user),
            timed[4],
        ),
        Step("tables and figures from the records", _py("plots", exp, f"results={base}", *out, *relocate, *user), timed[5]),
    ]
    if experiment == "folder":  # can the sweep be souped at all, and if not why (docs/your_dataset.md)
        steps.append(
            Step(
                "basin check of the LP init and the sweep",
                _py("soups", "diagnose", exp, f"ingredients=[{inits}/lp,{sweep}]", *user),
                timed[6],
            )
        )
    elif sweep_seed is None:  # your dataset gets the table and Fig. 1; `plots figure=checkpoints` adds the rest
        steps.append(
            Step(
                "figures from checkpoints (landscape, angles, soup vs ensemble)",
                _py("plots", exp, f"results={base}", "figure=checkpoints", *out, *user),
                timed[6],
            )
        )
    return steps


def seeds_steps(experiment: str, seeds: list[int], runs: str = "runs", cache: str = ".cache") -> list[Step]:
    """The experiment once per sweep seed, then mean +- sd of each finding in results/demo_seeds/.

    The demo's own seed (conf/sweep/demo.yaml, 0) is the plain experiment, results/<experiment>/ included."""
    steps, findings = [], []
    for seed in seeds:
        own = seed == DEMO_SWEEP_SEED
        for step in experiment_steps(experiment, runs, cache, sweep_seed=None if own else seed):
            steps.append(dataclasses.replace(step, name=f"seed {seed}: {step.name}"))
        findings.append(f"results/{experiment}/findings.json" if own else f"{runs}/{SEEDS_DIR}/seed{seed}/results/findings.json")
    steps.append(Step("mean and sd of each finding over the seeds", _py("plots.seeds", *findings, f"--out=results/{SEEDS_DIR}"), 5))
    return steps


def time_left(steps: list[Step], start: int, timings: dict[str, float], timed_now: dict[str, float]) -> float:
    """Seconds left for steps[start:].

    A step this machine has timed before (`timings`) counts at that time. The others count at their
    recorded 2-core estimate, scaled by this machine's pace so far: the measured time of the steps run
    in this invocation without an earlier timing (`timed_now`), over their estimates. On a host twice as
    slow as the one the estimates come from, the time left doubles once the first such step is done.
    """
    estimates = {s.name: s.estimate_s for s in steps}
    paced = [name for name in timed_now if name not in timings and estimates.get(name, 0) > 0]
    planned = sum(estimates[name] for name in paced)
    pace = sum(timed_now[name] for name in paced) / planned if planned >= 10 else 1.0
    return sum(timings.get(s.name, s.estimate_s * pace) for s in steps[start:])
