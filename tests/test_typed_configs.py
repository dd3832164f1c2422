"""The soup method registry and the typed (structured) configs of soup.* and finetune.*.

The expected defaults below are the values conf/soup/*.yaml and conf/finetune/default.yaml held before the
dataclasses (models/schemas.py) became their one source: the documented defaults.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_in_process, run_module
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import soups
import soups.greedy
from models.cli import CONF_DIR
from models.errors import UserError
from models.schemas import ACCEPT, Recipe, SoupParams
from soups.config import soup_params
from soups.methods import all_methods

# What each paper method's option must hold, with where the value comes from. A method added later is not listed
# here (its own test pins its values); every option, listed or not, is checked to start from its method's dataclass.
COMMON = {"init": None, "evaluate": True, "eval_chunk": 8, "accumulate": "float32", "across_tasks": False}  # θ0 unset; one task
GREEDY = {"order": "sorted", "accept": "gt", "early_rejection": True}  # official greedy: sorted by held-out, strict >
LEARNED = {"lr": 0.05, "weight_decay": 0.0, "epochs": 5}  # official learned-soup script: AdamW lr 0.05, 5 epochs
REFERENCE_VALUES = {
    "uniform": {"name": "uniform", "run_name": "uniform_soup", **COMMON},
    "greedy": {"name": "greedy", "run_name": "greedy_soup", **GREEDY, **COMMON},
    "greedy_random_order": {"name": "greedy", "run_name": "greedy_soup_random_order", **GREEDY, "order": "random", **COMMON},
    "greedy_ensemble": {"name": "greedy_ensemble", "run_name": "greedy_ensemble", **GREEDY, **COMMON},
    "ensemble": {"name": "ensemble", "run_name": "ensemble", **COMMON},
    "learned": {"name": "learned", "run_name": "learned_soup", **LEARNED, **COMMON},
    "learned_by_layer": {"name": "learned_by_layer", "run_name": "learned_soup_by_layer", **LEARNED, **COMMON},
    # the WiSE-FT code: α over 0, 0.1, ..., 1 and the mixing coefficient 0.5 it reports; θ0 = the zero-shot model
    "wise_ft": {
        "name": "wise_ft",
        "run_name": "wise_ft",
        **COMMON,
        "alphas": [i / 10 for i in range(11)],
        "alpha": 0.5,
        "endpoint": "uniform",
    },
    "model_stock": {"name": "model_stock", "run_name": "model_stock", **COMMON},
    # task arithmetic (Ilharco et al. 2023): λ over their grid 0, 0.05, ..., 1 unless given; θ0 = the zero-shot model
    "task_arithmetic": {
        "name": "task_arithmetic",
        "run_name": "task_arithmetic",
        **COMMON,
        "scaling": None,
        "scalings": [i / 20 for i in range(21)],
    },
}
SOUP_OPTIONS = sorted(p.stem for p in (REPO / "conf/soup").glob("*.yaml"))
OLD_FINETUNE_YAML = {  # conf/finetune/default.yaml before this change (workers: ${data.workers} = 0 for the world)
    "init": "zeroshot",
    "lr": 3.0e-5,
    "weight_decay": 0.1,
    "epochs": 10,
    "batch_size": 512,
    "grad_accum": 1,
    "warmup_steps": 500,
    "grad_clip": 1.0,
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "randaug": None,
    "precision": "auto",
    "compile": False,
    "freeze_bn": True,
    "workers": 0,
    "threads": None,
    "lp": {"steps": 300, "lr": 1.0, "weight_decay": 1.0e-5, "cache": True, "init_from": None},  # L-BFGS: step length, L2
    "save_every_steps": 0,
    "save_every_minutes": 10,
    "keep_state": False,
    "heldout_eval": True,
    "progress": True,
}


METHODS = all_methods()


def composed(stage: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=list(overrides))


def test_every_soup_option_runs_a_registered_method_and_every_method_has_an_option():
    assert set(REFERENCE_VALUES) <= set(SOUP_OPTIONS)  # the paper's methods and baselines are all offered
    names = set()
    for option in SOUP_OPTIONS:
        soup = composed("soups", f"soup={option}").soup
        names.add(str(soup.name))
        assert OmegaConf.get_type(soup) is METHODS[str(soup.name)].params  # the YAML starts from the method's own class
    assert names == set(METHODS)
    assert ACCEPT == soups.greedy.ACCEPT_RULES  # the config accepts exactly the rules greedy_select knows
    for method in METHODS.values():
        assert method.reference and issubclass(method.params, SoupParams) and callable(method.run)


@pytest.mark.parametrize("option", sorted(REFERENCE_VALUES))
def test_soup_defaults_are_the_references_values(option):
    cfg = composed("soups", f"soup={option}")
    resolved = OmegaConf.to_container(cfg.soup, resolve=True)
    expected = dict(REFERENCE_VALUES[option])
    if option in ("learned", "learned_by_layer"):  # the loader follows data.* (data=world: batch 256, no workers)
        expected.update(batch_size=256, workers=0)
    if option in ("wise_ft", "task_arithmetic"):  # θ0 is the experiment's zero-shot model (their references)
        expected["init"] = f"{cfg.paths.runs}/{cfg.name}/inits/zeroshot/model.safetensors"
    assert resolved == expected
    params = soup_params(cfg.soup)
    assert type(params) is METHODS[resolved["name"]].params
    assert dataclasses.asdict(params) == resolved  # what the stage reads and records as hparams.options


def test_soup_params_of_a_hand_built_config_fill_the_same_defaults():
    """A config built by hand (a dict, not composed) gets the dataclass's defaults and checks, not silent gaps."""
    params = soup_params({"name": "greedy", "run_name": "g", "order": "random"})
    assert (params.order, params.accept, params.early_rejection, params.eval_chunk) == ("random", "gt", True, 8)


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({"name": "greedy", "acept": "lt"}, "soup.acept: Key 'acept' not in 'GreedyParams'"),
        ({"name": "greedy", "eval_chunk": "many"}, "soup.eval_chunk: Value 'many' of type 'str' could not be converted to Integer"),
        ({"name": "greedy", "accept": "lt"}, "soup.accept: unknown value 'lt'; use gt or ge"),
        ({"name": "wise_ft", "alpha": 1.5}, "soup.alpha must lie in [0, 1]"),
        ({"name": "uniform", "accumulate": "float16"}, "soup.accumulate: unknown value 'float16'"),
        ({"name": "gredy"}, "soup.name: unknown soup method 'gredy'"),
    ],
)
def test_soup_params_refuse_bad_options_naming_the_key(options, phrase):
    with pytest.raises(UserError) as err:
        soup_params({"run_name": "x", **options})
    assert phrase in str(err.value)


def test_finetune_recipe_defaults_are_the_documented_ones():
    from finetune.train import resolve_recipe

    for stage in ("finetune", "eval", "soups", "plots"):  # every stage composes the same finetune node (run identity)
        assert OmegaConf.to_container(composed(stage).finetune, resolve=True) == OLD_FINETUNE_YAML
    cfg = composed("finetune")
    recipe = resolve_recipe(cfg)
    assert isinstance(recipe, Recipe) and dataclasses.asdict(recipe) == OLD_FINETUNE_YAML


def test_library_checks_through_the_same_dataclass_before_any_work():
    calls = []
    states = [{"w": torch.tensor([float(i)])} for i in range(2)]
    with pytest.raises(ValueError, match="accept: unknown value 'lt'"):
        soups.greedy_soup(states, score=lambda s: calls.append(1) or 0.0, accept="lt")
    assert calls == []


def assert_refused(result, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert all(p in lines[0] for p in phrases), lines[0]


CLI_CASES = {  # name: (stage, overrides, phrases the one line holds)
    "soups_typo": ("soups", ["soup=greedy", "soup.acept=lt"], ["soup.acept", "Key 'acept' not in 'GreedyParams'"]),
    "soups_added_typo": ("soups", ["soup=greedy", "+soup.acept=lt"], ["soup.acept: Key 'acept' not in 'GreedyParams'"]),
    "soups_type": ("soups", ["soup=greedy", "soup.eval_chunk=abc"], ["soup.eval_chunk=abc", "could not be converted to Integer"]),
    "soups_value": ("soups", ["soup=greedy", "soup.accept=lt"], ["soup.accept: unknown value 'lt'"]),
    "finetune_typo": ("finetune", ["finetune.lrr=1e-3"], ["finetune.lrr", "Key 'lrr' not in 'Recipe'"]),
    "finetune_type": ("finetune", ["finetune.lr=abc"], ["finetune.lr=abc", "could not be converted to Float"]),
    "finetune_nested_type": ("finetune", ["finetune.lp.steps=many"], ["finetune.lp.steps=many", "could not be converted to Integer"]),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_a_typo_or_a_wrong_type_is_one_line_exit_2_before_any_work(case, tmp_path: Path):
    stage, overrides, phrases = CLI_CASES[case]
    runs = tmp_path / "runs"
    env = {"MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = run_module if case == "finetune_nested_type" else run_in_process  # one as the real `python -m` command
    result = run(stage, *overrides, "ingredients=[]" if stage == "soups" else "data.scale=small", "device=cpu", env=env)
    assert_refused(result, *phrases)
    assert not runs.exists()  # refused before the run folder was made


@pytest.mark.parametrize("stage", ["eval", "soups"])
def test_eval_options_are_the_typed_defaults(stage):
    """`eval.*` has one home: the composed config is EvalOptions' defaults, with the loader following data.*."""
    from models.schemas import EvalOptions

    cfg = composed(stage)
    assert OmegaConf.get_type(cfg.eval) is EvalOptions
    resolved = OmegaConf.to_container(cfg.eval, resolve=True)
    defaults = dataclasses.asdict(EvalOptions())
    assert resolved == {**defaults, "batch_size": cfg.data.batch_size, "workers": cfg.data.workers}
    assert resolved["amp"] == "auto" and resolved["max_models_per_pass"] == 8 and resolved["logits_dtype"] == "float16"


def test_world_pretraining_options_are_the_typed_defaults():
    from models.schemas import PretrainConfig

    cfg = composed("world")
    assert OmegaConf.get_type(cfg.pretrain) is PretrainConfig
    resolved = OmegaConf.to_container(cfg.pretrain, resolve=True)
    assert resolved["steps"] == 1500 == PretrainConfig().steps and resolved["checkpoint_every"] == 250
    assert resolved["resume_file"] == f"{cfg.foundation}.resume.pt"  # the YAML sets only what depends on other keys
