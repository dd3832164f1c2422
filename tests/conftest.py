"""Shared fixtures. Tests are CPU-only and make the files they need."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference" / "model-soups-official"

# torch's threads: OMP_NUM_THREADS when set (`OMP_NUM_THREADS=1` beside other jobs, as docs/benchmarks.md advises; the
# stages run in this process by `run_in_process` then use what a fresh `python -m` would), else two. Measured: one
# thread for the suite and its commands made `.ci/run` slower (the early commands end first and leave a core idle).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))

# The one wall-clock bound in the suite: it stops a hung process, never a slow one (a loaded 2-core machine runs a
# stage many times slower than an idle one), so no test's outcome depends on the machine's speed.
HANG_S = 3600.0


@pytest.fixture
def reference_dir() -> Path:
    """The official model-soups results, read in place; tests skip when they are absent."""
    if not (REFERENCE / "individual_model_results.jsonl").exists():
        pytest.skip(f"official reference data not present at {REFERENCE}")
    return REFERENCE


def mark_done(*run_dirs: Path) -> None:
    """Mark run folders finished, as the stage wrapper does last (readers skip records of unfinished runs)."""
    for run_dir in run_dirs:
        (Path(run_dir) / "DONE").write_text("")


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = HANG_S) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repo root, capturing output."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, env=full_env, timeout=timeout)


def run_in_process(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """What `run_module` does, inside this process: `module.__main__.main()` with `sys.argv` and the
    environment set as the command would have them, stdout and stderr captured. Saves the ~9 s of imports
    a fresh interpreter pays; the real `python -m` path stays tested by the cases that use `run_module`.

    The return code is the SystemExit code (or the int `main` returns, else 0); an escaping exception is code 1 with
    its traceback on stderr, as the interpreter would print it. Hydra's global state, the logging handlers
    it installs, the working directory, `sys.argv`, the environment and torch's thread count are restored afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    main = importlib.import_module(f"{module}.__main__").main
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv[:], os.getcwd()
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved_loggers = [(lg, lg.handlers[:], lg.level, lg.disabled, lg.propagate) for lg in loggers]
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.update({"HYDRA_FULL_ERROR": "0", **(env or {})})
    saved_threads = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):  # as the command would start: torch reads it once, at import
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    sys.argv = [str(REPO / module.replace(".", "/") / "__main__.py"), *args]  # as `python -m` sets it
    os.chdir(REPO)
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                returned = main()
                code = returned if isinstance(returned, int) else 0  # `sys.exit(main())` modules return their code
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for lg, handlers, level, disabled, propagate in saved_loggers:
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:], lg.level, lg.disabled, lg.propagate = handlers, level, disabled, propagate
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, stdout.getvalue(), stderr.getvalue())


# --- long end-to-end commands, started with the session -----------------------------------------------------
# A test marked `@pytest.mark.early(module, *args, prepare=f, times=n, env=e)` gets `python -m module args` (or
# `python -c SCRIPT args` for `early("-c", SCRIPT, *args)`, with `e` added to its environment) started when
# the session starts (n times in a row: a rerun), in a folder of its own (runs/ and cache/ there, one thread), so
# it runs on the second core beside the rest of the suite (one process, mostly one core); the test, run last,
# waits for it through the `early` fixture. `prepare(folder)`, if given, writes the inputs first and returns more
# args. Nothing here reads a clock: a test waits for its commands' end, however long (HANG_S bounds a hang).


@dataclasses.dataclass
class EarlyRun:
    folder: Path
    args: tuple[str, ...]
    times: int
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    results: list[subprocess.CompletedProcess] = dataclasses.field(default_factory=list)
    stamps: list[dict[Path, int]] = dataclasses.field(default_factory=list)  # after each run: mtime of every file in runs/
    thread: threading.Thread | None = None

    def run(self) -> None:
        env = {**os.environ, "HYDRA_FULL_ERROR": "0", **early_env(self.folder), **self.env}
        # coreutils' nice, not a preexec_fn: this runs in a thread, where Python code between fork and exec may deadlock
        argv = ["nice", "-n", str(EARLY_NICE), sys.executable, *(self.args if self.args[0] == "-c" else ("-m", *self.args))]
        for _ in range(self.times):
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=HANG_S)
            self.results.append(done)
            self.stamps.append({p: p.stat().st_mtime_ns for p in (self.folder / "runs").rglob("*") if p.is_file()})
            if done.returncode != 0:
                break

    def wait(self) -> list[subprocess.CompletedProcess]:
        self.thread.join(timeout=HANG_S)
        return self.results


# The early commands run at a slightly lower priority (nice 2: the scheduler's weight 655 against 1024), so the suite's
# one process gets about 0.9 of a core beside the two pipelines rather than 2/3, and the two lanes end together
# (measured at equal priority: the commands ended 112 s before the suite). Priority orders the work, never a result.
EARLY_NICE = 2


def early_env(folder: Path) -> dict[str, str]:
    return {"MODEL_SOUPS_RUNS": str(folder / "runs"), "MODEL_SOUPS_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The early tests last, so their commands have the whole suite's time to run beside it."""
    items.sort(key=lambda item: item.get_closest_marker("early") is not None)


@pytest.fixture(scope="session", autouse=True)
def _early_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, EarlyRun]:
    runs = {}
    for item in request.session.items:
        marker = item.get_closest_marker("early")
        if marker is None:
            continue
        folder = tmp_path_factory.mktemp(f"early_{item.name[:40]}")
        prepare = marker.kwargs.get("prepare")
        args = (*marker.args, *(prepare(folder) if prepare else ()))
        run = EarlyRun(folder, args, marker.kwargs.get("times", 1), marker.kwargs.get("env", {}))
        run.thread = threading.Thread(target=run.run, daemon=True)
        run.thread.start()
        runs[item.nodeid] = run
    return runs


@pytest.fixture
def early(request: pytest.FixtureRequest, _early_runs: dict[str, EarlyRun]) -> EarlyRun:
    """This test's commands, started with the session (see above)."""
    return _early_runs[request.node.nodeid]
