"""`python -m pipeline EXPERIMENT --detach`: the pipeline's driver submitted as a SLURM job, with a fake
`sbatch` and `squeue` on PATH that record what they were asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.__main__ import main

FAKE_SBATCH = """#!/bin/sh
echo "$@" > "{calls}/sbatch_args"
cp "$2" "{calls}/submitted.sbatch"
echo "4242;cluster1"
"""
FAKE_SQUEUE = """#!/bin/sh
echo "$@" > "{calls}/squeue_args"
cat "{calls}/queue" 2>/dev/null
"""


def pipeline(capsys, monkeypatch, env: dict, *argv: str) -> tuple[int, str, str]:
    """`python -m pipeline ARGV` in this process: its exit code, stdout and stderr."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def slurm(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(), calls.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text.format(calls=calls))
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "USER": "me"}
    return calls, env


def test_detach_submits_the_same_command_without_detach_and_returns(slurm, tmp_path, capsys, monkeypatch):
    calls, env = slurm
    code, out, err = pipeline(capsys, monkeypatch, env, "paper_vitb32", "--detach", "--sbatch=--time=3-00:00:00", "name=mine", "sweep.n=4")
    assert code == 0, err
    folder = tmp_path / "runs/mine"
    assert out.strip() == (
        f"submitted the paper_vitb32 pipeline as SLURM job 4242; its log: {folder}/pipeline-4242.log "
        "(squeue -j 4242; scancel 4242 stops it, and the same command resumes)"
    )
    assert (calls / "sbatch_args").read_text().split() == ["--parsable", str(folder / "pipeline.sbatch")]
    assert (calls / "squeue_args").read_text().split() == ["--noheader", "--format=%i", "--name=pipeline-mine", "--user=me"]
    script = (calls / "submitted.sbatch").read_text().splitlines()
    assert script == [
        "#!/bin/bash",
        "#SBATCH --job-name=pipeline-mine",
        f"#SBATCH --output={folder}/pipeline-%j.log",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=4G",
        "#SBATCH --time=3-00:00:00",
        "# the pipeline's driver: it submits each step's jobs and waits for them (docs/experiments.md)",
        f"cd {REPO}",
        f"exec {sys.executable} -m pipeline paper_vitb32 name=mine sweep.n=4",
    ]
    assert not (folder / "pipeline_timings.json").exists()  # no step ran here


def test_a_second_driver_of_the_same_experiment_is_refused(slurm, capsys, monkeypatch):
    calls, env = slurm
    (calls / "queue").write_text("977\n")  # squeue lists a running pipeline-paper_vitb32
    code, _, err = pipeline(capsys, monkeypatch, env, "paper_vitb32", "--detach")
    assert code == 2
    assert err.strip() == (
        "error: the pipeline pipeline-paper_vitb32 is already running as SLURM job 977 (squeue -j 977); wait for it or scancel it"
    )
    assert not (calls / "sbatch_args").exists()


def test_without_sbatch_detach_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = pipeline(capsys, monkeypatch, {"PATH": str(empty), "MODEL_SOUPS_RUNS": str(tmp_path / "runs")}, "demo", "--detach")
    assert code == 2
    assert err.startswith("error: --detach submits the pipeline through SLURM, but sbatch is not on PATH")
    assert not Path(tmp_path / "runs").exists()
