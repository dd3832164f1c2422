"""The documented sequence of stage commands for each experiment.

Each step is a plain stage command line (what a user would type), so `python -m pipeline NAME --print`
is also the cluster guide. `estimate_s` is the measured duration on a 2-core CPU, used for the ETA
until this machine has timed the step itself.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    estimate_s: float = 60.0


def _py(*args: str) -> tuple[str, ...]:
    return ("python", "-m", *args)


SOUPS = "uniform,greedy,greedy_random_order,learned,learned_by_layer,ensemble,greedy_ensemble,wise_ft,model_stock"


EXPERIMENTS = ("demo", "paper_vitb32", "paper_vitb32_dryrun")


def experiment_steps(experiment: str, runs: str = "runs") -> list[Step]:
    """The steps of `experiment`; `runs` is the runs folder (paths.runs) the stages write to."""
    exp = f"experiment={experiment}"
    sweep_dir = f"{runs}/{experiment}/finetune"
    steps = {
        "demo": [
            Step("world, foundation and zero-shot table", _py("datasets.world", exp), 20),
            Step("zero-shot and LP inits", _py("finetune", "-m", exp, "sweep=inits"), 30),
            Step("fine-tuning sweep", _py("finetune", "-m", exp, "sweep=demo"), 360),
            Step("eval of every individual model", _py("eval", exp, f"checkpoints={sweep_dir}", "run_name=individuals"), 60),
            Step("soups, ensembles, WiSE-FT, Model Stock", _py("soups", "-m", exp, f"soup={SOUPS}", f"ingredients={sweep_dir}"), 180),
            Step("tables and figures from records", _py("plots", exp, "out=results/demo"), 20),
            Step("figures from checkpoints", _py("plots", exp, "out=results/demo", "figure=checkpoints"), 120),
        ],
    }
    if experiment not in steps:
        raise KeyError(experiment)
    return steps[experiment]
