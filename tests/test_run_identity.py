"""A run's identity holds only what changes its outputs (docs/design.md, "Runs on disk")."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from models.cli import CONF_DIR, check_identity, config_hash, identity_config
from models.errors import UserError


def identity(config_name: str, *overrides: str, inputs: tuple[str, dict] | None = None) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return identity_config(compose(config_name, overrides=list(overrides)), inputs)


def finished(folder, config: dict) -> None:
    (folder / "run_config.json").write_text(json.dumps(config))
    (folder / "DONE").write_text(config_hash(config))


JOB = ("experiment=demo", "sweep=demo", "sweep.index=4")


@pytest.mark.parametrize(
    "change",
    [("sweep.n=4", "sweep.n=5"), ("data.workers=0", "data.workers=3"), ("finetune.progress=true", "finetune.progress=false")],
)
def test_a_sweep_job_is_the_same_run_whatever_the_sweeps_size_workers_or_display(change):
    before, after = identity("finetune", *JOB, change[0]), identity("finetune", *JOB, change[1])
    assert before == after
    assert "n" not in before["sweep"] and "workers" not in before["data"] and "progress" not in before["finetune"]
    assert before["sweep"]["index"] == 4 and before["sweep"]["seed"] == 0  # what the job's draw is a function of


def test_what_changes_the_outputs_stays_in_the_identity():
    assert identity("finetune", *JOB, "finetune.lr=0.1") != identity("finetune", *JOB, "finetune.lr=0.2")
    assert identity("finetune", *JOB, "sweep.seed=1") != identity("finetune", *JOB)
    # An eval is named by the checkpoint files it resolves (as the stage computes them), not by the sweep's size:
    # a grown sweep is the same eval with more files, which scores only the new ones.
    files = ("checkpoints", {"runs/demo/finetune/model_0/model.safetensors": "0a1b2c3d"})
    assert identity("eval", "experiment=demo", "sweep.n=4", inputs=files) == identity("eval", "experiment=demo", "sweep.n=5", inputs=files)
    more = ("checkpoints", {**files[1], "runs/demo/finetune/model_1/model.safetensors": "4e5f6a7b"})
    assert identity("eval", "experiment=demo", inputs=files) != identity("eval", "experiment=demo", inputs=more)
    assert identity("eval", "experiment=demo", "data.workers=0") == identity("eval", "experiment=demo", "data.workers=4")
    # A soup reads the sweep's folder by name: a grown sweep is another soup (its new model must not be left out).
    assert identity("soups", "experiment=demo", "sweep.n=4") != identity("soups", "experiment=demo", "sweep.n=5")


def test_a_run_recorded_with_keys_now_ignored_is_still_the_same_run(tmp_path):
    now = identity("finetune", *JOB)
    earlier = json.loads(json.dumps(now))  # as an earlier version recorded it: with the size and worker keys
    earlier["sweep"]["n"], earlier["data"]["workers"], earlier["finetune"]["workers"] = 4, 2, 2
    finished(tmp_path, earlier)
    assert check_identity(tmp_path, now, force=False) == "skip"
    changed = dict(now, seed=7)
    with pytest.raises(UserError, match=r"seed: None -> 7"):  # base.yaml: seed null (each sweep job its own stream)
        check_identity(tmp_path, changed, force=False)
