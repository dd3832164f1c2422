"""Sweeps: job i's hyperparameters are a pure, reproducible function of the sweep config and i."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune import sweeps
from finetune.data import counter_seed
from models.cli import CONF_DIR
from models.errors import UserError


def sweep_cfg(name: str, *extra: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"sweep={name}", *extra])
    return OmegaConf.to_container(cfg.sweep, resolve=True)


def test_random_search_is_reproducible_across_processes():
    """Another interpreter, with another hash seed, draws the same hyperparameters for the same (seed, i)."""
    cfg = sweep_cfg("paper_random")
    here = [sweeps.sample_random(cfg["space"], 0, i) for i in range(5)]
    code = f"import json; from finetune import sweeps; print(json.dumps([sweeps.sample_random({cfg['space']!r}, 0, i) for i in range(5)]))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={"PYTHONHASHSEED": "123", "PATH": ""}, check=True
    )
    assert json.loads(out.stdout) == here
    assert sweeps.sample_random(cfg["space"], 0, 3) == here[3]  # order of calls does not matter
    assert len({json.dumps(h, sort_keys=True) for h in here}) == 5
    assert sweeps.sample_random(cfg["space"], 1, 0) != here[0]


def test_random_search_follows_the_paper_ranges_and_probabilities():
    space = sweep_cfg("paper_random")["space"]
    draws = [sweeps.sample_random(space, 0, i) for i in range(2000)]
    assert all(1e-6 <= d["lr"] <= 1e-4 and 6.3e-5 <= d["weight_decay"] <= 0.63 and 4 <= d["epochs"] <= 16 for d in draws)
    assert {d["epochs"] for d in draws} == set(range(4, 17))
    # log-uniform: half the draws fall below the geometric middle 1e-5
    assert sum(d["lr"] < 1e-5 for d in draws) / len(draws) == pytest.approx(0.5, abs=0.04)
    assert sum(d["label_smoothing"] == 0 for d in draws) / len(draws) == pytest.approx(0.55, abs=0.04)
    assert sum(d["mixup"] == 0 for d in draws) / len(draws) == pytest.approx(0.55, abs=0.04)
    assert sum(d["randaug"] is None for d in draws) / len(draws) == pytest.approx(0.4, abs=0.04)
    assert max(d["label_smoothing"] for d in draws) <= 0.25 and max(d["mixup"] for d in draws) <= 0.9
    magnitudes = {int(d["randaug"].split("-")[1][1:]) for d in draws if d["randaug"]}
    ops = {int(d["randaug"].split("-")[2][1:]) for d in draws if d["randaug"]}
    assert magnitudes == set(range(1, 21)) and ops == {0, 1, 2}
    # N as often as among the official augmented runs (hparam_info.json: 21, 18 and 5 of 44)
    many = (sweeps.sample_random(space, 0, i)["randaug"] for i in range(20000))
    augmented = [int(spec.split("-")[2][1:]) for spec in many if spec]
    for n, official in enumerate((21, 18, 5)):
        assert augmented.count(n) / len(augmented) == pytest.approx(official / 44, abs=0.015)


def test_job_hparams_apply_the_fixed_fields_and_demo_scales_lr_and_epochs():
    demo = sweep_cfg("demo", "sweep.index=2")
    hp = sweeps.job_hparams(demo)
    assert hp["init"] == "lp"
    assert demo["space"]["lr"][0] <= hp["lr"] <= demo["space"]["lr"][1]
    assert 2 <= hp["epochs"] <= 4  # conf/sweep/demo.yaml: 2..4 epochs (the paper's 4..16 scaled down)
    assert sweeps.job_hparams(sweep_cfg("none")) == {}


def test_replay_reads_the_official_configurations(reference_dir):
    cfg = sweep_cfg("paper_replay", f"sweep.hparam_info={reference_dir / 'hparam_info.json'}", "sweep.index=1")
    official = json.loads((reference_dir / "hparam_info.json").read_text())["model_1"]
    hp = sweeps.job_hparams(cfg)
    assert hp == {
        "lr": official["lr"],
        "weight_decay": official["wd"],
        "epochs": official["epochs"],
        "label_smoothing": official["smoothing"],
        "mixup": official["mix"],
        "randaug": official["aug"],
        "init": "lp",
    }
    table = sweeps.read_official_hparams(reference_dir / "hparam_info.json")
    replayed = [sweeps.replay_official(table, i) for i in range(1, 72)]
    assert len(replayed) == 71 and all(r["lr"] > 0 for r in replayed)
    with pytest.raises(UserError, match="model_0"):
        sweeps.replay_official(table, 0)  # the LP initialisation is not a fine-tuning run


def test_the_default_replay_path_points_at_the_reference_without_copying_it():
    cfg = sweep_cfg("paper_replay")
    assert cfg["hparam_info"].endswith("shared/reference/model-soups-official/hparam_info.json")
    assert not list(REPO.rglob("hparam_info.json"))


def test_replay_with_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="sweep.hparam_info"):
        sweeps.job_hparams({"kind": "replay", "index": 1, "hparam_info": str(tmp_path / "nope.json")})


def test_grid_enumerates_every_combination_once():
    cfg = sweep_cfg("paper_grid")
    n = math.prod(len(v) for v in cfg["grid"].values())
    points = [sweeps.grid_point(cfg["grid"], i) for i in range(n)]
    assert len({json.dumps(p, sort_keys=True) for p in points}) == n
    assert points[0] == {k: v[0] for k, v in cfg["grid"].items()}
    assert points[1]["mixup"] == cfg["grid"]["mixup"][1]  # the last field varies fastest
    with pytest.raises(UserError, match="sweep.index"):
        sweeps.grid_point(cfg["grid"], n)


@pytest.mark.parametrize("name,count", [("paper_random", 71), ("paper_replay", 71), ("paper_grid", 12), ("demo", 8)])
def test_sweeps_launch_one_job_per_index_into_model_folders(name, count):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"sweep={name}", "sweep.index=5"], return_hydra_config=True)
    spec = cfg.hydra.sweeper.params["sweep.index"]
    low, high = (int(x) for x in spec.removeprefix("range(").removesuffix(")").split(","))
    assert high - low == count
    assert cfg.run_name == "model_5"


def test_the_paper_random_space_covers_every_official_value(reference_dir):
    space = sweep_cfg("paper_random")["space"]
    official = [v for v in json.loads((reference_dir / "hparam_info.json").read_text()).values() if "lr" in v]
    assert len(official) == 71  # + model_0, the LP init: the sweep is jobs 1..71 from inits/lp
    for entry in official:
        assert space["lr"][0] <= entry["lr"] <= space["lr"][1]
        assert space["weight_decay"][0] <= entry["wd"] <= space["weight_decay"][1], entry["wd"]
        assert space["epochs"][0] <= entry["epochs"] <= space["epochs"][1]
        assert entry["smoothing"] == 0 or space["smoothing"][0] <= entry["smoothing"] <= space["smoothing"][1]
        assert entry["mix"] == 0 or space["mixup"][0] <= entry["mix"] <= space["mixup"][1]
    augmented = [entry["aug"].split("-") for entry in official if entry["aug"] not in (None, "none")]
    assert all(space["randaug_m"][0] <= int(m[1:]) <= space["randaug_m"][1] for _, m, _ in augmented)
    # the weights of N = 0, 1, 2 are the official counts
    assert space["randaug_n_weights"] == [sum(int(n[1:]) == k for _, _, n in augmented) for k in range(3)]


def test_each_job_has_its_own_data_seed_a_pure_function_of_the_sweep_seed_and_index():
    replay = sweep_cfg("paper_replay", "sweep.index=4")
    fifth = dict(replay, index=5)  # official model_4 and model_5 share every hyperparameter
    assert sweeps.job_hparams(replay) == sweeps.job_hparams(fifth)
    assert sweeps.data_seed(None, replay) != sweeps.data_seed(None, fifth)
    assert sweeps.data_seed(None, replay) == counter_seed(0, 4)  # the same in every process (a blake2b hash)
    assert sweeps.data_seed(None, dict(replay, seed=1)) != sweeps.data_seed(None, replay)  # --seeds draws new streams
    assert sweeps.data_seed(7, replay) == 7  # seed= overrides
    assert sweeps.data_seed(None, sweep_cfg("none")) == 0  # a single run
