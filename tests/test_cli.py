"""The stage wrapper: one-line errors, --help, resolved config beside outputs, DONE/FAILED, sweeps."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import run_in_process


@pytest.fixture
def toy(tmp_path):
    """The toy stage (tests/toy_stage), in this process, its runs under tmp_path."""

    def run(*args, env=None):
        return run_in_process("toy_stage", *args, f"paths.runs={tmp_path}/runs", env=env)

    return run


@pytest.mark.parametrize(
    "module,own_text",
    [
        # one stage as the real command, started with the session beside the suite (conftest's `early`)
        pytest.param("finetune", "fine-tune a CLIP image tower plus a linear head", marks=pytest.mark.early("finetune", "--help")),
        ("eval", "python -m eval data=imagenet checkpoints="),
        ("soups", "python -m soups diagnose ingredients=...   (the basin check"),
        ("plots", "regenerate the paper's tables and figures from results records"),
        ("datasets.world", "Usage: python -m datasets.world [task=zeroshot|pretrain]"),
    ],
)
def test_help_explains_the_stage(module, own_text, request):
    result = request.getfixturevalue("early").wait()[0] if module == "finetune" else run_in_process(module, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"python -m {module}: ") and own_text in result.stdout
    assert "Config groups" in result.stdout and "experiment:" in result.stdout and "Examples:" in result.stdout
    assert result.stdout.count("Runs go to ") == 1  # the shared part (conf/base.yaml), once
    groups = result.stdout.split("== Config groups (choose with GROUP=OPTION) ==\n")[1].split("\n\n")[0].splitlines()
    assert "logger: none, wandb" in groups and "eval: default" in groups  # conf/logger/{none,wandb}.yaml, conf/eval/default.yaml
    assert not any(line.startswith(("schema/", "hydra")) for line in groups)  # structured nodes and Hydra's own are not choices
    assert "\nmodel:\n  arch: " in result.stdout  # the composed config follows


def test_help_shows_the_config_with_the_overrides_and_a_bad_one_is_one_line():
    result = run_in_process("soups", "soup=greedy", "soup.accept=ge", "--help")
    assert result.returncode == 0 and "\n  accept: ge\n" in result.stdout and "\n  order: sorted\n" in result.stdout
    result = run_in_process("eval", "model=vit_b99", "--help")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "Could not find 'model/vit_b99'" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args,expected", [(["no_such_key=1"], "Could not override 'no_such_key'"), (["model=vit_b99"], "Could not find 'model/vit_b99'")]
)
def test_a_bad_option_is_one_line_and_exit_2(args, expected):
    result = run_in_process("eval", *args)  # tests/test_bad_input.py runs eval's real command
    assert result.returncode == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_user_error_is_one_line_and_leaves_failed(toy, tmp_path):
    result = toy("seed=1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: seed: 1 is unlucky; pick another"
    run_dir = tmp_path / "runs/default/plots/s1"
    assert (run_dir / "FAILED").exists() and not (run_dir / "DONE").exists()


def test_a_run_writes_its_resolved_config_and_done_then_is_skipped(toy, tmp_path):
    assert toy("seed=0").returncode == 0
    run_dir = tmp_path / "runs/default/plots/s0"
    assert (run_dir / ".hydra/config.yaml").exists()
    assert (run_dir / "DONE").exists()
    (run_dir / "work.txt").write_text("untouched")
    assert toy("seed=0").returncode == 0
    assert (run_dir / "work.txt").read_text() == "untouched"  # skipped: DONE exists
    assert toy("seed=0", "force=true").returncode == 0
    assert (run_dir / "work.txt").read_text() == "0"


def test_failed_multirun_jobs_do_not_kill_the_sweep(toy, tmp_path):
    result = toy("-m", "seed=0,1,2,3")
    sweep = tmp_path / "runs/default/plots"
    assert (sweep / "s0/DONE").exists() and (sweep / "s3/DONE").exists()  # jobs after the failures ran
    assert (sweep / "s1/FAILED").read_text().startswith("error: seed: 1 is unlucky")
    assert "RuntimeError: a bug" in (sweep / "s2/FAILED").read_text()
    assert result.returncode != 0
    assert "2 job(s) failed" in result.stderr


def test_a_rerun_with_another_config_is_refused_naming_the_keys_and_force_replaces(toy, tmp_path):
    run_dir = tmp_path / "runs/default/plots/s0"
    assert toy("seed=0").returncode == 0
    config = (run_dir / ".hydra/config.yaml").read_text()
    done = (run_dir / "DONE").read_text()
    (run_dir / "stale.txt").write_text("from the first run")
    refused = toy("seed=0", "plots.max_examples=7")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {run_dir}: holds a finished run with a different config (plots.max_examples: None -> 7); "
        "pass force=true to replace it, or choose another run_name"
    ]
    assert (run_dir / ".hydra/config.yaml").read_text() == config and (run_dir / "DONE").read_text() == done
    assert not (run_dir / "FAILED").exists() and (run_dir / "stale.txt").exists()
    assert toy("seed=0", "plots.max_examples=7", "force=true").returncode == 0
    assert not (run_dir / "stale.txt").exists()  # the earlier run's outputs are gone, not kept beside the new ones
    assert "max_examples: 7" in (run_dir / ".hydra/config.yaml").read_text()
    assert (run_dir / "DONE").read_text() != done
    assert toy("seed=0", "plots.max_examples=7").returncode == 0  # the same config again: skipped


def test_multirun_jobs_without_a_sweep_name_get_their_own_folders(toy, tmp_path):
    result = toy("-m", "--own-names", "seed=3,4", "plots.max_examples=5")
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = tmp_path / "runs/default/plots"
    assert (sweep / "seed-3/work.txt").read_text() == "3" and (sweep / "seed-4/work.txt").read_text() == "4"
    assert (sweep / "seed-3/DONE").exists() and (sweep / "seed-4/DONE").exists()


def test_a_run_recorded_before_a_null_option_existed_is_the_same_run(tmp_path):
    import json

    from models.cli import check_identity, config_hash
    from models.errors import UserError

    recorded = {"soup": {"name": "uniform"}, "finetune": {"lr": 0.001}}
    (tmp_path / "run_config.json").write_text(json.dumps(recorded))
    (tmp_path / "DONE").write_text(config_hash(recorded))
    # a later version adds soup.init with a null default: the finished run computed the same thing
    assert check_identity(tmp_path, {"soup": {"name": "uniform", "init": None}, "finetune": {"lr": 0.001}}, force=False) == "skip"
    # a key the run lacked, with a value, is another config, named in the message
    with pytest.raises(UserError, match=r"soup.init: None -> 'lp.safetensors'"):
        check_identity(tmp_path, {"soup": {"name": "uniform", "init": "lp.safetensors"}, "finetune": {"lr": 0.001}}, force=False)
    with pytest.raises(UserError, match=r"finetune.lr: 0.001 -> 0.002"):
        check_identity(tmp_path, {"soup": {"name": "uniform"}, "finetune": {"lr": 0.002}}, force=False)


def test_an_in_process_run_leaves_no_hydra_state_behind(tmp_path):
    """`run_in_process` (the bad-input tests' runner) restores what Hydra changes, so later tests see none of it."""
    import importlib
    import logging

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    importlib.import_module("eval.__main__")  # its imports set library defaults in os.environ, as in any process
    root = logging.getLogger()
    before = (root.handlers[:], root.level, os.getcwd(), sys.argv[:], dict(os.environ))
    result = run_in_process("eval", f"checkpoints=[{tmp_path / 'nowhere.safetensors'}]", f"paths.runs={tmp_path}/runs", "device=cpu")
    assert result.returncode == 2 and result.stderr.startswith("error: checkpoints: ")
    assert (tmp_path / "runs/default/eval/eval/eval.log").exists()  # the run got as far as Hydra's job logging
    assert (root.handlers, root.level, os.getcwd(), sys.argv, dict(os.environ)) == before
    assert not GlobalHydra.instance().is_initialized()
    with pytest.raises(ValueError):
        HydraConfig.get()


def test_a_relaunched_sweep_submits_only_its_unfinished_jobs(toy, tmp_path, monkeypatch):
    """Our launchers (local, slurm) ask the stage before they submit: a job finished with this config is reported as
    skipped and never submitted (no process, no SLURM task); a new job and a changed config are submitted."""
    import submitit
    from hydra.core.utils import JobReturn, JobStatus

    from models.cli import OUTCOMES_ENV

    assert toy("-m", "seed=0,3").returncode == 0  # Hydra's basic launcher, in this process: two finished runs
    submitted = []

    class Submitted:  # stands in for submitit (local processes or sbatch): records what it was given
        def __init__(self, cluster, **params):
            self.cluster = cluster

        def update_parameters(self, **params):
            pass

        def map_array(self, launcher, job_overrides, *params):
            submitted.append((self.cluster, sorted(o for overrides in job_overrides for o in overrides if o.startswith("seed="))))
            done = [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=None) for o in job_overrides]
            return [type("Job", (), {"results": lambda self, r=r: [r]})() for r in done]

    monkeypatch.setattr(submitit, "AutoExecutor", Submitted)
    outcomes = tmp_path / "outcomes"
    sweep = tmp_path / "runs/default/plots"
    again = toy("-m", "seed=0,3,4", "hydra/launcher=local", env={OUTCOMES_ENV: str(outcomes)})
    assert again.returncode == 0, again.stderr[-2000:]
    assert outcomes.read_text() == f"skip {sweep}/s0\nskip {sweep}/s3\n"  # what the jobs themselves would report
    assert toy("-m", "seed=0,3", "plots.max_examples=7", "hydra/launcher=slurm").returncode == 0
    assert toy("-m", "seed=3", "hydra/launcher=slurm").returncode == 0
    # the new job; both jobs of another config (they refuse it themselves); nothing for a finished one
    assert submitted == [("local", ["seed=4"]), ("slurm", ["seed=0", "seed=3"])]
