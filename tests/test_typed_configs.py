"""The soup method registry and the typed (structured) configs of soup.* and finetune.*.

The soup values expected below are the protocol's, from the papers and the official code (PROTOCOL); the finetune
defaults are the values conf/finetune/default.yaml held before the dataclasses (models/schemas.py) became their one
source: the documented defaults.
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
from models.schemas import ACCEPT, GreedyParams, LearnedParams, Recipe, SoupParams, WiseFTParams
from soups.config import soup_params
from soups.registry import all_methods

# The values of the protocol, from their sources; every other field is its dataclass's default (models/schemas.py,
# the one copy). Greedy soup (paper, Recipe 1) takes ingredients best held-out first and keeps one only when held-out
# accuracy rises strictly (the official code's `>`); WiSE-FT evaluates alpha = 0, 0.1, ..., 1 and reports 0.5 (WiSE-FT
# paper); the learned soups train with AdamW at lr 0.05 for 5 epochs (the official by-layer script), on the data's loader.
PROTOCOL = {
    SoupParams: {"init": None, "evaluate": True, "accumulate": "float32"},
    GreedyParams: {"accept": "gt", "early_rejection": True},
    LearnedParams: {"lr": 0.05, "weight_decay": 0.0, "epochs": 5, "batch_size": 256, "workers": 0},  # data=world: 256, 0 workers
    WiseFTParams: {"alphas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "alpha": 0.5},
}
ORDER = {"greedy": "sorted", "greedy_ensemble": "sorted", "greedy_random_order": "random"}  # the paper's ablation: random
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
    "lp": {"steps": 300, "lr": 1.0e-3, "weight_decay": 0.0, "cache": True, "init_from": None},
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
    names = set()
    for option in SOUP_OPTIONS:
        soup = composed("soups", f"soup={option}").soup
        names.add(str(soup.name))
        assert OmegaConf.get_type(soup) is METHODS[str(soup.name)].params  # the YAML starts from the method's own class
    assert names == set(METHODS)
    assert ACCEPT == soups.greedy.ACCEPT_RULES  # the config accepts exactly the rules greedy_select knows
    for method in METHODS.values():
        assert method.reference and issubclass(method.params, SoupParams) and callable(method.run)


@pytest.mark.parametrize("option", SOUP_OPTIONS)
def test_soup_defaults_are_the_protocols(option):
    cfg = composed("soups", f"soup={option}")
    resolved = OmegaConf.to_container(cfg.soup, resolve=True)
    params = soup_params(cfg.soup)
    assert type(params) is METHODS[resolved["name"]].params
    assert dataclasses.asdict(params) == resolved  # what the stage reads and records as hparams.options
    for params_class, values in PROTOCOL.items():
        if isinstance(params, params_class):
            assert {key: resolved[key] for key in values} == values, params_class.__name__
    if isinstance(params, GreedyParams):
        assert params.order == ORDER[option]


def test_each_soup_option_writes_a_row_of_the_main_table():
    from plots.methods import MODEL_ID_ROWS, WISE_FT_KIND

    run_names = [composed("soups", f"soup={option}").soup.run_name for option in SOUP_OPTIONS]
    assert sorted(run_names) == sorted([*MODEL_ID_ROWS, WISE_FT_KIND])  # one option per row; wise_ft's row picks its alpha


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
    recipe, merged = resolve_recipe(cfg)
    assert isinstance(recipe, Recipe) and dataclasses.asdict(recipe) == OLD_FINETUNE_YAML == merged


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
