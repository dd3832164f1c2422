"""Each experiment's sequence of stage commands, read from the `pipeline:` key of its config.

`conf/experiment/<name>.yaml` lists the steps (`python -m <module> <args>`, fields documented in
conf/experiment/demo.yaml), so a new experiment is a YAML file. Each step is a plain command line (what a
user would type), so `python -m pipeline NAME --print` is also the cluster guide. `estimate_s` is the
recorded duration, used for the time left until this machine has timed the step itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

from models.cli import CONF_DIR, RUN_ONLY_KEYS, one_line
from models.errors import UserError


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    estimate_s: float = 60.0
    withheld: tuple[str, ...] = ()  # the user's overrides of keys this step sets itself (its own win)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """One entry of `pipeline.steps`: `python -m <module> <args>`, then the launcher's and the user's overrides."""

    name: str
    module: str
    args: list[str]
    estimate_s: float = 60.0
    launch: bool = False  # a cluster job: `-m` and `pipeline.launcher` (every GPU step)
    overrides: bool = True  # takes the user's overrides (data.root=..., model=..., name=...)
    per_seed: bool = True  # runs again for each extra sweep seed (--seeds)


# Steps that several experiments run with the same arguments, declared once. An experiment's step
# `{use: inits, estimate_s: 15}` is the named mapping, its `{experiment}` the experiment's name, with the
# step's own fields on top; its ${...} resolve in the experiment's config, as a step written out would.
SHARED_STEPS: dict[str, dict[str, Any]] = {
    "inits": {  # the zero-shot model and the LP init (the paper's model_0) every sweep job starts from
        "name": "zero-shot and LP inits",
        "module": "finetune",
        "args": ["-m", "experiment={experiment}", "finetune.epochs=0", "finetune.init=zeroshot,lp",
                 "hydra.sweep.dir=${paths.runs}/${name}/inits", "hydra.sweep.subdir=\\${finetune.init}"],
        "launch": True,
    },
    "individuals": {
        "name": "eval of the inits and every fine-tuned model",
        "module": "eval",
        "args": ["experiment={experiment}", "checkpoints=[${paths.runs}/${name}/inits,${paths.runs}/${name}/finetune]", "run_name=individuals"],
        "launch": True,
    },
}  # fmt: skip
PIPELINE_KEYS = {"steps", "launcher", "sweep", "results", "needs"}
SPEC_FIELDS = {f.name: f.type for f in dataclasses.fields(StepSpec)}  # name -> the annotation, as text
TYPES = {"str": (str,), "list[str]": (list,), "float": (int, float), "bool": (bool,)}


def seed_runs(runs: str, experiment: str, seed: int) -> str:
    """The runs folder of the experiment drawn with another sweep seed: runs/<experiment>_seeds/seed<S>."""
    return f"{runs}/{experiment}_seeds/seed{seed}"


def experiments(conf_dir: Path | None = None) -> list[str]:
    """The experiments the pipeline can run: conf/experiment/*.yaml with a `pipeline:` key."""
    found = []
    for path in sorted(((conf_dir or CONF_DIR) / "experiment").glob("*.yaml")):
        try:
            if "pipeline" in (OmegaConf.load(path) or {}):
                found.append(path.stem)
        except Exception as err:  # not YAML: say which file
            raise UserError(f"conf/experiment/{path.name}: {one_line(err)}") from err
    return found


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


def override_key(arg: str) -> str | None:
    """The config key a command-line override sets (`finetune.epochs` of `++finetune.epochs=1`, `model` of
    `model=vit_b32`, `hydra/launcher` of `hydra/launcher=slurm`); None for a flag such as `-m`."""
    if arg.startswith("-") or "=" not in arg:
        return None
    return arg.split("=", 1)[0].lstrip("+~") or None


def changes_outputs(extra: Sequence[str]) -> bool:
    """Whether a user's overrides may change an experiment's outputs: any but the keys that change only
    how runs go (progress, workers: models.cli.RUN_ONLY_KEYS), `force`, Hydra's own (launcher) and where
    things live (`paths.*`, `data.root`: the cluster's copy of ImageNet is still ImageNet)."""
    keys = [override_key(a) for a in extra]
    where = ("hydra", "paths.", "data.root")
    return any(k is not None and k not in (*RUN_ONLY_KEYS, "force") and not k.startswith(where) for k in keys)


def _compose(experiment: str, conf_dir: Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    known = experiments(conf_dir)
    if experiment not in known:
        raise UserError(f"unknown experiment {experiment!r}; choose from {', '.join(known)} (conf/experiment/*.yaml with a pipeline: key)")
    try:
        with initialize_config_dir(config_dir=str(conf_dir or CONF_DIR), version_base="1.3"):
            cfg = compose("base", overrides=[f"experiment={experiment}", *overrides])
    except Exception as err:  # a broken experiment file: Hydra's message names it
        raise UserError(f"conf/experiment/{experiment}.yaml: {one_line(err)}") from err
    if not isinstance(cfg.get("pipeline"), DictConfig):
        raise UserError(f"conf/experiment/{experiment}.yaml: pipeline: a mapping with steps: [...] is needed")
    OmegaConf.set_struct(cfg, False)  # the pipeline fills in folders and the user's choices
    return cfg


def _spec(entry: Any, where: str) -> StepSpec:
    """A `pipeline.steps` entry, checked field by field."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: a step is a mapping with {', '.join(SPEC_FIELDS)}")
    unknown = sorted(set(entry) - set(SPEC_FIELDS))
    missing = [f.name for f in dataclasses.fields(StepSpec) if f.default is dataclasses.MISSING and f.name not in entry]
    if unknown or missing:
        wrong = f"unknown field {unknown[0]!r}" if unknown else f"missing field {missing[0]!r}"
        raise UserError(f"{where}: {wrong} (a step has {', '.join(SPEC_FIELDS)})")
    for field, value in entry.items():
        kinds = TYPES[SPEC_FIELDS[field]]
        if not isinstance(value, kinds) or (bool in kinds) != isinstance(value, bool):
            raise UserError(f"{where}.{field}: {value!r} is not a {SPEC_FIELDS[field]}")
        if field == "args" and not all(isinstance(a, str) for a in value):
            raise UserError(f"{where}.args: every argument must be a string, got {value!r}")
    return StepSpec(**entry)


def _use_shared_steps(experiment: str, steps: Any, where: str) -> None:
    """Replace each `{use: NAME, ...}` entry of `steps` (unresolved) by SHARED_STEPS[NAME] for `experiment`,
    the entry's other fields on top."""
    if not isinstance(steps, ListConfig):
        return
    for i, entry in enumerate(steps):
        if not isinstance(entry, DictConfig) or "use" not in entry:
            continue
        use = entry.use
        if use not in SHARED_STEPS:
            raise UserError(f"{where}.steps[{i}].use: unknown shared step {use!r} (pipeline/steps.py has {', '.join(SHARED_STEPS)})")
        shared = {**SHARED_STEPS[use], "args": [arg.replace("{experiment}", experiment) for arg in SHARED_STEPS[use]["args"]]}
        step = OmegaConf.merge(shared, entry)  # unresolved: the ${...} resolve with the rest of the pipeline
        del step["use"]
        steps[i] = step


def _pipeline(experiment: str, cfg: DictConfig) -> dict[str, Any]:
    """The experiment's resolved `pipeline:` key (its shared steps filled in), its steps checked."""
    where = f"conf/experiment/{experiment}.yaml: pipeline"
    _use_shared_steps(experiment, cfg.pipeline.get("steps"), where)
    try:
        pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    except Exception as err:  # an interpolation that names no key
        raise UserError(f"{where}: {one_line(err)}") from err
    unknown = sorted(set(pipeline) - PIPELINE_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(PIPELINE_KEYS))})")
    steps = pipeline.get("steps")
    if not isinstance(steps, list) or not steps:
        raise UserError(f"{where}.steps: a list of steps is needed")
    if not isinstance(pipeline.get("launcher") or [], list):
        raise UserError(f"{where}.launcher: a list of overrides is needed")
    pipeline["steps"] = [_spec(entry, f"{where}.steps[{i}]") for i, entry in enumerate(steps)]
    return pipeline


def experiment_steps(
    experiment: str,
    runs: str = "runs",
    cache: str = ".cache",
    extra: Sequence[str] = (),
    sweep_seed: int | None = None,
    conf_dir: Path | None = None,
) -> list[Step]:
    """The steps of `experiment`; `runs` and `cache` are the folders paths.runs and paths.cache point to;
    `extra` are overrides passed to every stage (`name=` and `sweep=` see `split_overrides`).

    With `sweep_seed`, the random search is drawn with that seed into its own runs folder
    (`runs/<experiment>_seeds/seed<S>`), whose tables and findings go to its `results/` (steps with
    `per_seed: false` are left out): the input of the seeds summary (`seeds_steps`)."""
    name, sweep_choice, rest = split_overrides(extra)
    cfg = _compose(experiment, conf_dir)
    missing = [need for need in cfg.pipeline.get("needs") or [] if not any(a.startswith(need.split("=")[0] + "=") for a in rest)]
    if missing:
        raise UserError(f"the {experiment} experiment needs {missing[0]}")
    # What the steps' ${...} read: the folders as this caller names them, the user's name and sweep.
    cfg.paths.runs, cfg.paths.cache = runs, cache
    relocate: list[str] = []
    if sweep_seed is not None:
        cfg.paths.runs = seed_runs(runs, experiment, sweep_seed)
        cfg.pipeline.results = f"{cfg.paths.runs}/results"
        relocate = [f"paths.runs={cfg.paths.runs}"]
    if name:
        cfg.name = name
    if cfg.pipeline.get("results") and sweep_seed is None and changes_outputs(extra):
        # results/<experiment>/ holds what the experiment's own config gives; another config's tables
        # and figures go beside its runs (`python -m pipeline demo data.scale=small` must not overwrite them)
        cfg.pipeline.results = f"{cfg.paths.runs}/{cfg.name}/results"
    if sweep_choice:
        if "sweep" not in cfg.pipeline:
            raise UserError(f"sweep={sweep_choice}: the {experiment} experiment has no sweep step (no pipeline.sweep)")
        cfg.pipeline.sweep = sweep_choice
    pipeline = _pipeline(experiment, cfg)
    launcher = pipeline.get("launcher") or []
    # Every step that takes them gets the user's overrides after its own (and after the launcher's),
    # except those of a key the step sets itself: the step's own value wins (the inits step's
    # finetune.epochs=0 over a user's finetune.epochs=1, which would make the LP init a fine-tune).
    user = [*([f"name={name}"] if name else []), *rest]
    steps = []
    for spec in pipeline["steps"]:
        if sweep_seed is not None and not spec.per_seed:
            continue
        args = list(spec.args)
        if sweep_seed is not None:  # the sweep step draws with the seed, every stage in the seed's runs folder
            args = [a for arg in args for a in ([arg, f"sweep.seed={sweep_seed}"] if arg.startswith("sweep=") else [arg])]
            args += relocate if spec.overrides else []
        if spec.launch and launcher:
            args = [*(["-m"] if "-m" not in args else []), *args, *launcher]
        own = {override_key(a) for a in args} - {None}
        given = user if spec.overrides else []
        passed = [a for a in given if override_key(a) not in own]
        withheld = tuple(a for a in given if override_key(a) in own)
        steps.append(Step(spec.name, ("python", "-m", spec.module, *args, *passed), spec.estimate_s, withheld))
    return steps


def seeds_steps(experiment: str, seeds: list[int], runs: str = "runs", cache: str = ".cache", conf_dir: Path | None = None) -> list[Step]:
    """The experiment once per sweep seed, then mean +- sd of each finding in `<pipeline.results>_seeds/`
    (results/demo_seeds for the demo).

    The seed of the experiment's own sweep (conf/sweep/demo.yaml: 0) is the plain experiment, its
    `pipeline.results` folder included."""
    cfg = _compose(experiment, conf_dir)
    if not cfg.pipeline.get("results") or not cfg.pipeline.get("sweep"):
        raise UserError(
            f"--seeds: the {experiment} experiment needs pipeline.sweep and pipeline.results (conf/experiment/{experiment}.yaml)"
        )
    own_seed = _compose(experiment, conf_dir, [f"sweep={cfg.pipeline.sweep}"]).sweep.seed
    steps, findings = [], []
    for seed in seeds:
        own = seed == own_seed
        for step in experiment_steps(experiment, runs, cache, sweep_seed=None if own else seed, conf_dir=conf_dir):
            steps.append(dataclasses.replace(step, name=f"seed {seed}: {step.name}"))
        results = cfg.pipeline.results if own else f"{seed_runs(runs, experiment, seed)}/results"
        findings.append(f"{results}/findings.json")
    steps.append(
        Step(
            "mean and sd of each finding over the seeds",
            ("python", "-m", "plots.seeds", *findings, f"--out={cfg.pipeline.results}_seeds"),
            5,
        )
    )
    return steps


def found_finished(outcomes: str) -> bool:
    """Whether a step found its work finished, from what its runs reported (`models.cli.report_outcome`,
    one `skip|run FOLDER` line each): every run skipped. A step with no resumable run did its work."""
    kinds = [line.split(" ", 1)[0] for line in outcomes.splitlines() if line]
    return bool(kinds) and all(kind == "skip" for kind in kinds)


def time_left(steps: list[Step], start: int, timings: dict[str, float], timed_now: dict[str, float]) -> float:
    """Seconds left for steps[start:].

    A step this machine has timed before (`timings`) counts at that time. The others count at their
    recorded 2-core estimate, scaled by this machine's pace so far: the measured time of the steps that
    did work in this invocation without an earlier timing (`timed_now`; the caller leaves out steps that
    found their work finished), over their estimates. On a host twice as slow as the one the estimates
    come from, the time left doubles once the first such step is done.
    """
    estimates = {s.name: s.estimate_s for s in steps}
    paced = [name for name in timed_now if name not in timings and estimates.get(name, 0) > 0]
    planned = sum(estimates[name] for name in paced)
    pace = sum(timed_now[name] for name in paced) / planned if planned >= 10 else 1.0
    return sum(timings.get(s.name, s.estimate_s * pace) for s in steps[start:])
