"""Every option of every config group composes with every stage's primary config, so a typo fails CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import models.cli  # noqa: F401  (registers the project_root resolver)
from models.cli import CONF_DIR
from models.schemas import SCHEMA_NODES

STAGES = sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "base")
SKIP_DIRS = {"hydra"}


def group_options() -> list[tuple[str, str]]:
    options = []
    for yaml in sorted(CONF_DIR.rglob("*.yaml")):
        group = yaml.parent.relative_to(CONF_DIR).as_posix()
        if group == "." or group.split("/")[0] in SKIP_DIRS:
            continue
        options.append((group, yaml.stem))
    return options


def test_the_stages_are_the_documented_ones():
    # the four stages of the design, and `python -m datasets.world` (the embedded world and its foundation)
    assert STAGES == ["eval", "finetune", "plots", "soups", "world"]


def is_global(group: str, option: str) -> bool:
    """An experiment, or an option that sets keys across the tree (`@package _global_`)."""
    return group == "experiment" or "@package _global_" in (CONF_DIR / group / f"{option}.yaml").read_text()


@pytest.fixture(scope="module")
def stage_trees() -> dict[str, dict]:
    """Each stage's primary config as composed, unresolved and untyped (an option's node is put into it)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {stage: OmegaConf.to_container(compose(stage), resolve=False) for stage in STAGES}


def option_rounds() -> list[list[tuple[str, str]]]:
    """Every option, dealt into rounds of at most one option per group (one Hydra compose checks a round; a typo
    names its file in the error either way). Options that set keys across the tree go in rounds of their own: an
    experiment sets other groups itself, and a round's other options would replace its choices."""
    rounds = []
    for global_ in (True, False):
        by_group: dict[str, list[str]] = {}
        for group, option in group_options():
            if is_global(group, option) == global_:
                by_group.setdefault(group, []).append(option)
        depth = max(map(len, by_group.values()))
        rounds += [[(group, options[i]) for group, options in by_group.items() if i < len(options)] for i in range(depth)]
    return rounds


def test_the_rounds_hold_every_option_once():
    dealt = [pair for round_ in option_rounds() for pair in round_]
    assert sorted(dealt) == group_options()
    assert all(len({group for group, _ in round_}) == len(round_) for round_ in option_rounds())


@pytest.mark.parametrize("round_", option_rounds(), ids=lambda r: "+".join(f"{g}={o}" for g, o in r))
def test_every_option_composes_with_every_stage(round_: list[tuple[str, str]], stage_trees: dict[str, dict]):
    # A round of options that set keys across the tree is composed with every stage. Any other option fills only
    # cfg[group] (the stages share base.yaml's groups): composed once, its node is what its file says, and that node
    # resolves in every stage's tree (Hydra itself in the first, each other stage's keys behind its interpolations).
    global_ = is_global(*round_[0])
    for stage in STAGES if global_ else STAGES[:1]:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(stage, overrides=[f"{group}={option}" for group, option in round_])
        job = OmegaConf.to_container(cfg, resolve=True)  # hydra: interpolations exist only inside a Hydra run
        assert job["stage"] == stage
    if global_:
        return  # test_pipeline_experiments and the stages' tests check the keys those set
    for group, option in round_:
        node = option_node(group, option)
        assert OmegaConf.to_container(cfg[group], resolve=False) == node, f"{group}={option}"
        for stage, tree in stage_trees.items():
            resolved = OmegaConf.to_container(OmegaConf.create({**tree, group: node}), resolve=True)
            assert resolved["stage"] == stage and resolved[group].keys() == node.keys()


def option_node(group: str, option: str) -> dict:
    """What `group=option` puts under cfg[group]: the option file's own keys, over the defaults of the
    structured schema it starts from (`- /schema/<group>@_here_: <name>`, models/schemas.py), if any."""
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False)
    node: dict = {}
    for entry in own.pop("defaults", []):
        if isinstance(entry, dict):
            ((target, name),) = entry.items()
            node.update(OmegaConf.to_container(OmegaConf.structured(SCHEMA_NODES[(target.lstrip("/").split("@")[0], name)])))
    return {**node, **own}


@pytest.mark.parametrize("launcher", ["basic", "submitit_local", "local", "submitit_slurm", "slurm"])
def test_launchers_compose(launcher: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    expected = {
        "basic": "BasicLauncher",
        "submitit_local": "LocalLauncher",
        "local": "LimitedLocalLauncher",
        "submitit_slurm": "SlurmLauncher",
        "slurm": "SlurmLauncher",
    }
    assert target.endswith(expected[launcher])


def test_slurm_settings_live_in_conf():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=mypart"], return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "mypart"
    assert cfg.hydra.launcher.gpus_per_node >= 1


def test_a_typo_fails_composition():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(Exception, match="vit_b99"):
            compose("eval", overrides=["model=vit_b99"])


def test_groups_match_the_design():
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    assert groups == {"model", "data", "finetune", "sweep", "soup", "eval", "experiment", "logger", "paths", "hydra", "plots"}


@pytest.mark.parametrize("experiment", ["demo", "paper_vitb32"])
def test_an_experiment_names_its_runs(experiment: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"experiment={experiment}"])
    assert cfg.name == experiment
    assert f"/{experiment}/eval/" in cfg.out


@pytest.mark.parametrize("parallel,cores,waves", [(2, 8, [(0, 2), (2, 2), (4, 1)]), (None, 3, [(0, 3), (3, 2)]), (9, 1, [(0, 5)])])
def test_the_local_launcher_runs_at_most_parallel_jobs_at_once(parallel, cores, waves, monkeypatch):
    from hydra_plugins.model_soups_launcher import LimitedLocalLauncher

    launched = []  # submitit_local's own launch, stubbed (Hydra's plugin scan may have re-imported its module)
    monkeypatch.setattr(
        LimitedLocalLauncher.__bases__[0],
        "launch",
        lambda self, jobs, first: launched.append((first, len(jobs))) or [f"r{first + i}" for i in range(len(jobs))],
    )
    monkeypatch.setattr("models.evaluate.available_cores", lambda: cores)
    launcher = LimitedLocalLauncher(parallel=parallel, submitit_folder="x", timeout_min=1)
    results = launcher.launch([[f"seed={i}"] for i in range(5)], initial_job_idx=0)
    assert launched == waves  # (first job index, jobs) of each wave, one wave after another
    assert results == [f"r{i}" for i in range(5)]  # every job's result, in order
