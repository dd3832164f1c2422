"""The wrapper every stage entry point goes through.

- Composes the stage's Hydra config from `conf/` (one primary config per stage, all sharing `base.yaml`).
- A user's mistake (`UserError`, an unknown config option) becomes one line on stderr and exit code 2.
- In a multirun, a failed job records its error in `<run dir>/FAILED` and returns, so the sweep goes on;
  `FailureSummary` reports failed jobs when the sweep ends and makes the sweep exit non-zero.
- A finished run writes `DONE` last; rerunning into a folder with `DONE` skips it (`force=true` reruns).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from models.atomic import write_text_atomic
from models.errors import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
DONE_FILE = "DONE"
FAILED_FILE = "FAILED"

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("plus"):  # ${plus:${sweep.n},1}: sweeps whose indices start at 1
    OmegaConf.register_new_resolver("plus", lambda a, b: int(a) + int(b))

# Arguments after which we let Hydra itself handle the command line (help, info, sweeps).
_HYDRA_FLAGS = (
    "-m",
    "--multirun",
    "-h",
    "--help",
    "--hydra-help",
    "-i",
    "--info",
    "-c",
    "--cfg",
    "-sc",
    "--shell-completion",
    "-p",
    "--package",
    "--resolve",
)


def output_dir() -> Path:
    """The current run's folder (Hydra's output dir; we never chdir into it)."""
    return Path(HydraConfig.get().runtime.output_dir)


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def overrides() -> list[str]:
    """The command-line overrides of this run, for results records."""
    return list(HydraConfig.get().overrides.task)


def one_line(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    text = text.split(" Config search path:")[0]  # Hydra appends its search path; not useful to a user
    return text or type(err).__name__


def precheck_overrides(config_name: str, argv: list[str]) -> None:
    """Compose the config once before Hydra does, so a bad option is one clear line, not a report."""
    if any(arg in _HYDRA_FLAGS for arg in argv):
        return
    user_overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name, overrides=user_overrides)
    except Exception as err:  # any composition failure is a user's config mistake
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig, resumable: bool) -> Any:
    out = output_dir()
    done = out / DONE_FILE
    if resumable and done.exists() and not cfg.get("force", False):
        log.info("skipping %s: already finished (DONE exists; pass force=true to rerun)", out)
        return None
    (out / FAILED_FILE).unlink(missing_ok=True)
    try:
        result = task(cfg)
    except UserError as err:
        write_text_atomic(out / FAILED_FILE, f"error: {one_line(err)}\n")
        if is_multirun():
            log.error("job failed: %s", one_line(err))
            return None
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        write_text_atomic(out / FAILED_FILE, traceback.format_exc())
        if is_multirun():
            log.exception("job failed (traceback in %s)", out / FAILED_FILE)
            return None
        raise
    if resumable:
        write_text_atomic(done, "")
    return result


def stage_entry(config_name: str, task: Callable[[DictConfig], Any], resumable: bool = True) -> Callable[[], None]:
    """Build `main()` for `python -m <stage>` from a task function `task(cfg)`."""

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def hydra_main(cfg: DictConfig) -> Any:
        return run_task(task, cfg, resumable)

    def main() -> None:
        precheck_overrides(config_name, sys.argv[1:])
        hydra_main()

    return main


class FailureSummary(Callback):
    """At the end of a sweep, name the jobs that failed and exit non-zero if any did."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(p.parent for p in sweep_dir.glob(f"*/{FAILED_FILE}"))
        if failed:
            names = ", ".join(p.name for p in failed[:10])
            print(f"error: {len(failed)} job(s) failed in {sweep_dir}: {names} (see FAILED in each folder)", file=sys.stderr)
            sys.exit(1)
