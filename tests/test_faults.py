"""Faults of the machine rather than of the input: a full disk, an unwritable folder, a second writer, a
stop signal, and files that are not what they claim. Each is one line on stderr, exit 2 (or 128 + the
signal), nothing half-written (no DONE, no checkpoint, no records).

Table-driven like tests/test_bad_input.py, whose crafted files and checks it reuses; all in this process
(`run_in_process`) except the signals, which need a real process to receive them.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HANG_S, REPO, run_in_process
from test_bad_input import UNIFORM, assert_one_line_exit_2, crafted, left_behind, pair  # noqa: F401 - crafted is a fixture

from datasets.imagenet_miniature import make_miniature


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def faulty(crafted, tmp_path_factory) -> Path:  # noqa: F811 - the fixture imported above
    """crafted's files, plus ImageNet-R in miniature, a web page, a bad __metadata__ and a looping class folder."""
    root = tmp_path_factory.mktemp("faulty")
    make_miniature(root / "imagenet", sets=("ImageNetR",), per_class=3, size=4)
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"
    (root / "page.pt").write_bytes(page)
    (root / "page.safetensors").write_bytes(page)
    # A valid safetensors file whose __metadata__ is a list: the format wants an object of strings.
    header = json.dumps({"__metadata__": ["kind", "soup"], "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (root / "list_metadata.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    # A folder dataset whose class folder is a link to itself.
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / "folder" / split / name).mkdir(parents=True)
    (root / "folder/train/fox").symlink_to("fox")
    return root


def to_soup(c, f):
    return [pair(c, "good1.safetensors"), *UNIFORM]


def imagenet_eval(c, f):
    return ["data=imagenet", f"data.root={f / 'imagenet'}", "eval.sets=[ImageNetR]", f"checkpoints=[{c / 'imagenet.safetensors'}]"]


# name: (stage, overrides given the crafted and faulty folders, what to break in this process, phrase of the one line)
CASES = {
    "disk_full_writing_a_soup": ("soups", to_soup, ("models.checkpoint.save_file", no_space), "no space left"),
    "disk_full_writing_eval_records": ("eval", imagenet_eval, ("eval.runner.append_records", no_space), "no space left"),
    "read_only_out": ("soups", lambda c, f: [*to_soup(c, f), f"out={f / 'read_only/run'}"], "read_only", "is read-only or not yours"),
    "metadata_not_an_object": (
        "soups",
        lambda c, f: [f"ingredients=[{c / 'good0.safetensors'},{f / 'list_metadata.safetensors'}]", *UNIFORM],
        None,
        "its __metadata__ is list, not an object of strings",
    ),
    "class_folder_is_a_symlink_loop": (
        "eval",
        lambda c, f: ["data=folder", f"data.root={f / 'folder'}", f"checkpoints=[{c / 'good0.safetensors'}]"],
        None,
        "train/fox: Too many levels of symbolic links",
    ),
    "html_page_as_pt": (
        "soups",
        lambda c, f: [f"ingredients=[{f / 'page.pt'}]", *UNIFORM],
        None,
        "page.pt: not a checkpoint (it is a web page",
    ),
    "html_page_as_safetensors": (
        "eval",
        lambda c, f: [f"checkpoints=[{f / 'page.safetensors'}]"],
        None,
        "page.safetensors: not a checkpoint (it is a web page",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fault_is_one_line_exit_2_and_leaves_nothing(case, crafted, faulty, tmp_path, monkeypatch):  # noqa: F811
    stage, overrides, breakage, phrase = CASES[case]
    if breakage == "read_only":
        (faulty / "read_only").mkdir(exist_ok=True)
        (faulty / "read_only").chmod(0o555)
        real_access = os.access  # as root the mode does not stop writes: report what a read-only mount would
        monkeypatch.setattr(os, "access", lambda p, mode: not str(p).startswith(str(faulty / "read_only")) and real_access(p, mode))
    elif breakage is not None:
        monkeypatch.setattr(*breakage)
    runs = tmp_path / "runs"
    env = {"MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = run_in_process(stage, *overrides(crafted, faulty), "device=cpu", env=env)
    assert_one_line_exit_2(result, phrase)
    assert left_behind(runs) == [] and left_behind(faulty) == []
    assert not [p for p in runs.rglob("*") if p.name.endswith(".tmp") or p.name == "LOCK"]  # no temp file, no lock left


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(crafted, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    env = {"MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run_dir = runs / "default/soups/uniform_soup"
    run_dir.mkdir(parents=True)
    host = socket.gethostname()
    (run_dir / "LOCK").write_text(f"{os.getppid()} {host}\n")  # a live process on this host: pytest's parent
    result = run_in_process("soups", *to_soup(crafted, None), "device=cpu", env=env)
    assert_one_line_exit_2(result, f"another run (pid {os.getppid()} on this host) is writing this folder (LOCK)")
    assert sorted(p.name for p in run_dir.iterdir()) == ["LOCK", "soups.log"]  # nothing of the owner's touched
    assert (run_dir / "LOCK").read_text() == f"{os.getppid()} {host}\n"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is now free: a killed run's lock
    (run_dir / "LOCK").write_text(f"{gone.pid} {host}\n")
    result = run_in_process("soups", *to_soup(crafted, None), "device=cpu", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"the run that held it (pid {gone.pid} on {host}) is gone; taking it over" in result.stdout
    assert (run_dir / "DONE").exists() and not (run_dir / "LOCK").exists()  # released when the run ended

    (run_dir / "LOCK").write_text(f"{gone.pid} another-host\n")  # cannot be checked from here: refused
    result = run_in_process("soups", *to_soup(crafted, None), "force=true", "device=cpu", env=env)
    assert_one_line_exit_2(result, "another run (pid")
    assert "on host another-host" in result.stderr and "remove" in result.stderr


# eval and soups, one signal each (a real process each: the signal must reach a process of its own)
STOPS = {
    "eval": (signal.SIGTERM, lambda c, f: [*imagenet_eval(c, f), "run_name=stopped"], "eval/stopped"),
    "soups": (
        signal.SIGINT,
        lambda c, f: [f"ingredients=[{c / 'imagenet.safetensors'}]", "soup=uniform", "soup.evaluate=false"],
        "soups/uniform_soup",
    ),
}


# The stage as a user runs it, held inside its run (lock taken, handlers in place) until a signal arrives, so
# the stop never races the run's end on a fast machine.
HELD = """
import runpy, sys, time
import models.cli as cli
save = cli._save_hydra_files
def held(*args):
    save(*args)
    while True:
        time.sleep(0.05)
cli._save_hydra_files = held
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("stage", sorted(STOPS))
def test_a_stop_signal_ends_the_run_in_one_line_and_it_resumes_later(stage, crafted, faulty, tmp_path):  # noqa: F811
    stop, overrides, folder = STOPS[stage]
    runs = tmp_path / "runs"
    env = {**os.environ, "MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [*overrides(crafted, faulty), "data.batch_size=1", "data.workers=0", "device=cpu"]
    # the stop signals as a terminal gives them: a suite started in the background (`make test &`) inherits
    # SIGINT ignored, which the stage rightly leaves alone, and the run would wait for a signal it never gets
    process = subprocess.Popen(
        [sys.executable, "-c", HELD, stage, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: [signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)],
    )
    run_dir = runs / "default" / folder
    while not (run_dir / "LOCK").exists() and process.poll() is None:  # the run has started (its handlers are in place)
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=HANG_S)  # a hang bound, never a slow machine's limit
    assert process.returncode == 128 + stop, stderr[-3000:]
    name = stop.name
    assert stderr.strip().splitlines() == [  # one line: nothing else on stderr, no import-time noise of the process
        f"stopped by {name}: {run_dir} is not finished; rerun the same command to resume it (finished work is kept)"
    ]
    assert (run_dir / "FAILED").read_text() == f"stopped by {name} before it finished; rerun the same command to resume\n"
    assert not (run_dir / "DONE").exists() and not (run_dir / "LOCK").exists()

    resumed = run_in_process(stage, *args, env={k: env[k] for k in ("MODEL_SOUPS_RUNS", "MODEL_SOUPS_CACHE", "OMP_NUM_THREADS")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # the same command again finishes the run
    assert (run_dir / "DONE").exists() and not (run_dir / "FAILED").exists()
    assert (run_dir / ("model.safetensors" if stage == "soups" else "results.jsonl")).exists()
