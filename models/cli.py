"""The wrapper every stage entry point goes through.

- Composes the stage's Hydra config from `conf/` (one primary config per stage, all sharing `base.yaml`).
- A user's mistake (`UserError`, an unknown config option) becomes one line on stderr and exit code 2.
- In a multirun, a failed job records its error in `<run dir>/FAILED` and returns, so the sweep goes on;
  `FailureSummary` reports failed jobs when the sweep ends and makes the sweep exit non-zero.
- A run folder is a function of the resolved config (docs/design.md, "Runs on disk"). At the start the
  wrapper records the resolved config in `run_config.json`; a finished run writes `DONE` last, holding
  that config's sha256. Rerunning with the same config skips the run (or resumes an unfinished one); with
  a different config it is refused, naming the differing keys, before anything in the folder changes
  (`.hydra/` included: the wrapper, not Hydra, writes it). `force=true` empties the folder and reruns.
- Records of a run without `DONE` are never valid: an unfinished attempt's `results.jsonl` is removed
  before the next attempt starts.
- A stage whose run covers input files (eval: the checkpoints) names them in its identity by path and
  sha256 (`stage_entry(inputs=)`): when only they changed, a finished run is updated (the stage reuses the
  records of the files it already scored), not skipped and not refused.
- In a multirun, jobs that a sweep does not name get a folder named after their swept overrides
  (`job_name`), so no two jobs share a folder.
- One writer per run folder: `LOCK` names the owner's pid and host (models/lock.py); a second writer is
  refused in one line (exit 2), a dead owner's lock on this host is taken over, saying so.
- A full disk or an unwritable folder (ENOSPC, EDQUOT, EROFS, EACCES) is one line naming the file, exit 2;
  an unwritable `out` is refused before Hydra opens its log there. Writes are atomic, DONE is not written.
- SIGTERM (scancel, a kill) and SIGINT (Ctrl-C) stop the run at the next Python bytecode: FAILED says it
  was stopped, one line says to rerun to resume, exit 143 / 130 (128 + the signal). Inside a submitit job
  SIGTERM stays submitit's (it lets it pass; pre-emption goes through its USR2 checkpoint and requeue).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import string
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.model_soups_launcher import register_launcher
from models.atomic import write_text_atomic
from models.errors import UserError
from models.lock import LOCK_FILE, run_lock
from models.run_files import DONE_FILE, FAILED_FILE, RESULTS_FILE, RUN_CONFIG_FILE
from models.schemas import register_configs

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
# Not part of a run's identity (dotted keys): where things live (a moved checkout still matches), the rerun
# switch, the experiment's sequence of stage commands (python -m pipeline), which no stage reads, and keys
# that change how a run goes but not what it writes: progress display and DataLoader worker counts.
RUN_ONLY_KEYS = ("finetune.progress", "eval.progress", "data.workers", "finetune.workers", "eval.workers")
IDENTITY_IGNORES = ("force", "paths", "out", "pipeline", *RUN_ONLY_KEYS)
# Also out of a sweep job's identity (`sweep.kind` other than none): the sweep's size. A job's outputs are a
# pure function of the sweep's seed and its index (finetune/sweeps.py), so `sweep.n=5` after a finished
# `sweep.n=4` trains only the new job. Eval leaves it out too: its identity holds the checkpoint files it
# resolves (INPUTS_KEY), so a grown sweep scores only the new checkpoints. Soups keep `sweep.n`: a grown
# sweep is not silently left out of a finished soup (the rerun is refused, naming it; force=true remakes it).
SWEEP_JOB_IGNORES = ("sweep.n",)
# A stage whose run covers a set of input files (eval: the checkpoints) names them here in its identity, by
# path and sha256 prefix, instead of the config string that resolves to them (see `stage_entry(inputs=)`).
INPUTS_KEY = "inputs"
# Set by SweepNaming in the launching process: the keys the multirun sweeps over (comma-separated).
SWEPT_KEYS_ENV = "MODEL_SOUPS_SWEPT_KEYS"
# Set by `python -m pipeline` for each step: a file where every run appends its outcome (`report_outcome`).
OUTCOMES_ENV = "MODEL_SOUPS_OUTCOMES"
MAX_NAME = 96
UNSAFE_IN_NAMES = re.compile(r"[/,=\s]")  # path separators, and what Hydra would split an override on


def job_name(named: str, *, _root_: DictConfig) -> str:
    """The run folder's name: `named` (a sweep's or soup method's name, else the stage), plus, in a
    multirun, the job's swept overrides that `named` does not already tell apart, e.g. `finetune.lr-0.001`.

    Keys and values are joined with `-` and items with `+` (not Hydra's `=` and `,`), so a path into the
    folder can be passed back as an override (`ingredients=[runs/x/finetune.lr-0.001/model.safetensors]`)."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed outside a Hydra run (compose API, tests)
        return named
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return named
    told_apart = {"soup"} if _root_.get("stage") == "soups" else set()
    if OmegaConf.select(_root_, "sweep.run_name") is not None:
        told_apart.add("sweep.index")
    swept = os.environ.get(SWEPT_KEYS_ENV)
    swept_keys = set(swept.split(",")) if swept is not None else None  # None: no callback ran; every override counts
    parts = []
    for override in hydra_cfg.overrides.task:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in told_apart or (swept_keys is not None and key not in swept_keys):
            continue
        parts.append(f"{key}-{UNSAFE_IN_NAMES.sub('_', value.strip('[]'))}")
    if not parts:
        return named
    suffix = "+".join(sorted(parts))
    name = suffix if named == _root_.get("stage") else f"{named}+{suffix}"
    if len(name) > MAX_NAME:
        name = f"{named}_{hashlib.sha256(suffix.encode()).hexdigest()[:10]}"
    return name


if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("plus"):  # ${plus:${sweep.n},1}: sweeps whose indices start at 1
    OmegaConf.register_new_resolver("plus", lambda a, b: int(a) + int(b))
if not OmegaConf.has_resolver("job_name"):
    OmegaConf.register_new_resolver("job_name", job_name)
register_configs()  # the structured configs conf/finetune and conf/soup start from (models/schemas.py)
register_launcher()  # hydra/launcher=local: submitit_local, at most `parallel` jobs at once (hydra_plugins/model_soups_launcher.py)

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
    cause = err.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf"):  # Hydra names the override, OmegaConf why
        why = str(cause).splitlines()[0].strip()
        if why and why not in text:  # (Hydra's hint to append with + does not apply to a typed config)
            text = f"{text.split(' To append to your config use')[0].rstrip('.')}: {why}"
    return text or type(err).__name__


def exit_code(action: Callable[[], Any]) -> int:
    """Run a plain (non-Hydra) command: 0, or a user's mistake as one line on stderr and exit code 2."""
    try:
        action()
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


HELP_FLAGS = ("-h", "--help")


def config_groups() -> str:
    """The config groups a user chooses from, one line each (`group: option, ...`): conf/'s folders and YAML files,
    without Hydra's own (conf/hydra: hydra/launcher=slurm) and the schema/ nodes options start from."""
    groups: dict[str, list[str]] = {}
    for yaml in CONF_DIR.rglob("*.yaml"):
        group = yaml.parent.relative_to(CONF_DIR).as_posix()
        if group != "." and group.split("/")[0] != "hydra":
            groups.setdefault(group, []).append(yaml.stem)
    return "".join(f"{group}: {', '.join(sorted(options))}\n" for group, options in sorted(groups.items()))


def stage_help(config_name: str, argv: list[str]) -> str:
    """`python -m <stage> [overrides] --help`: conf/base.yaml's `hydra.help.template`, with $APP_CONFIG_GROUPS from
    `config_groups` and $CONFIG the composed config with the overrides in `argv` (resolved with --resolve; other
    flags are ignored), as Hydra fills it. Hydra's own listing copies its whole config repository for each config
    group it lists (3 s of every --help here) and lists the schema/ nodes too."""
    overrides = [a for a in argv if not a.startswith("-")]  # flags (-m, --resolve); an override never starts with -
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    template = str(cfg.hydra.help.template)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return string.Template(template).safe_substitute(
        APP_CONFIG_GROUPS=config_groups(), CONFIG=OmegaConf.to_yaml(job, resolve="--resolve" in argv)
    )


def precheck_overrides(config_name: str, argv: list[str], check: Callable[[DictConfig], Any] | None = None) -> None:
    """Compose the config once before Hydra does, so a bad option is one clear line, not a report.

    Structured configs (a stage's dataclasses in Hydra's ConfigStore) refuse unknown keys and wrong types
    here; `check(cfg)` then refuses bad values (a UserError), before the run folder is touched."""
    if any(arg in _HYDRA_FLAGS for arg in argv):
        return
    user_overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=user_overrides)
    except Exception as err:  # any composition failure is a user's config mistake
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    try:
        out = OmegaConf.select(cfg, "out", throw_on_resolution_failure=False)
        if out:
            check_writable(Path(str(out)))
        if check is not None:
            check(cfg)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def check_writable(folder: Path) -> None:
    """The run folder can be created and written (Hydra opens its job log there before any stage code
    runs, so an unwritable `out` would otherwise be Hydra's traceback)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"out: {folder} cannot be created: {existing} is a file, not a folder; choose another out= or paths.runs=")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"out: {folder} cannot be written ({existing} is read-only or not yours); choose a writable out= or paths.runs=")


def without_ignored(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a resolved config, or one recorded in run_config.json) without the keys that are not part
    of a run's identity: IDENTITY_IGNORES, and SWEEP_JOB_IGNORES in a sweep job or a run named by its input files."""
    sweep_kind = (config.get("sweep") or {}).get("kind", "none") if isinstance(config.get("sweep"), dict) else "none"
    ignored = IDENTITY_IGNORES + (SWEEP_JOB_IGNORES if sweep_kind != "none" or INPUTS_KEY in config else ())

    def drop(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict):
            return node
        return {k: drop(v, f"{prefix}{k}.") for k, v in node.items() if f"{prefix}{k}" not in ignored}

    return drop(config, "")


def identity_config(cfg: DictConfig, inputs: tuple[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """The resolved config that names a run, without the keys that do not change its outputs
    (`without_ignored`); values under a `paths.*` folder are written relative to it
    (`${paths.root}/models/...`), so a moved checkout matches. `inputs` (config key, {file: sha256
    prefix}): the files replace that key's text under INPUTS_KEY."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if inputs is not None:
        resolved.pop(inputs[0], None)
        resolved[INPUTS_KEY] = inputs[1]
    roots = sorted(((str(v), k) for k, v in (resolved.get("paths") or {}).items() if v), key=lambda item: -len(item[0]))

    def relative(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        if isinstance(value, str):
            for root, name in roots:
                if value == root or value.startswith(root.rstrip("/") + "/"):
                    return "${paths." + name + "}" + value[len(root) :]
        return value

    return relative(without_ignored(resolved))


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old.keys() | new.keys())
        return [d for k in keys for d in differing_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _describe_difference(old: dict[str, Any], new: dict[str, Any], limit: int = 5) -> str:
    keys = differing_keys(old, new)

    def value(config: dict[str, Any], key: str) -> Any:
        for part in key.split("."):
            config = config.get(part) if isinstance(config, dict) else None
        return config

    shown = ", ".join(f"{k}: {value(old, k)!r} -> {value(new, k)!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_identity(out: Path, config: dict[str, Any], force: bool, inputs_key: str | None = None) -> str:
    """What to do with the run folder: 'run' (fresh or resume), 'skip' (finished with this config),
    'clean' (force=true) or 'update' (finished, and only its input files differ: the stage keeps the records
    of the files it already scored and adds the others). A folder holding another config is refused with a
    UserError. `inputs_key`: the config key that INPUTS_KEY replaces (an older record may hold its text)."""
    recorded_path, done = out / RUN_CONFIG_FILE, out / DONE_FILE
    if force:
        return "clean" if recorded_path.exists() or done.exists() else "run"
    if not recorded_path.exists():
        if done.exists():  # DONE without a recorded identity (a run folder older than run_config.json): finished
            return "skip"
        return "run"
    try:
        recorded = json.loads(recorded_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{recorded_path}: unreadable; pass force=true to rerun this folder from scratch") from None
    if not isinstance(recorded, dict):
        raise UserError(f"{recorded_path}: not a config object; pass force=true to rerun this folder from scratch")
    recorded = without_ignored(recorded)  # like with like: a record may hold keys the identity ignores
    # The same config, or one that differs only by keys that are null on one side and absent on the
    # other (an option added later with a null default: the run computed the same thing).
    differing = differing_keys(recorded, config)
    if config_hash(recorded) == config_hash(config) or not differing:
        return "skip" if done.exists() else "run"
    if inputs_key is not None and all(k.split(".")[0] in (INPUTS_KEY, inputs_key) for k in differing):
        return "update" if done.exists() else "run"  # an unfinished attempt's records are dropped anyway
    state = "a finished run" if done.exists() else "an unfinished run"
    raise UserError(
        f"{out}: holds {state} with a different config ({_describe_difference(recorded, config)}); "
        "pass force=true to replace it, or choose another run_name"
    )


def _clear_folder(out: Path) -> None:
    """force=true: remove the earlier run's outputs (the job log Hydra has just opened stays)."""
    keep = {f"{HydraConfig.get().job.name}.log", LOCK_FILE}
    for entry in out.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _save_hydra_files(out: Path, cfg: DictConfig) -> None:
    """What Hydra writes to `.hydra/` (we turn Hydra's own writing off, so a refused rerun leaves it alone)."""
    hydra_cfg = HydraConfig.get()
    folder = out / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))),
    }
    for name, text in files.items():
        write_text_atomic(folder / name, text)


def _fail(out: Path, err: UserError, write_failed: bool = True) -> None:
    if write_failed:
        _note_failed(out, f"error: {one_line(err)}\n")
    if is_multirun():
        log.error("job failed: %s", one_line(err))
        return
    print(f"error: {one_line(err)}", file=sys.stderr)
    sys.exit(2)


def report_outcome(outcome: str, where: Path | str) -> None:
    """Tell `python -m pipeline` (when it runs this process) whether a run found its work finished
    ('skip') or did it ('run'): a step whose runs all skipped sets no pace for the time left."""
    path = os.environ.get(OUTCOMES_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(f"{outcome} {where}\n")


# Errors of the filesystem a user fixes (free space, a writable folder), not bugs: one line, exit 2.
DISK_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "not permitted"}  # fmt: skip
# Exit codes of a run stopped by a signal: 128 + the signal's number, as a shell reports it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # kill / scancel, and Ctrl-C


class Stopped(BaseException):
    """A stop signal arrived (SIGTERM, SIGINT). A BaseException, so no `except Exception` in a stage
    swallows it; `run_task` turns it into one line, FAILED and exit 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Raise `Stopped` in the main thread on SIGTERM and SIGINT, for the block (a stage may be deep in a
    DataLoader or a forward pass; the next Python bytecode raises)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    # Only where nobody else handles the signal: in a submitit job, submitit deliberately lets SIGTERM
    # pass (SLURM's pre-emption and time limit go through its USR2 checkpoint-and-requeue instead).
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    ours = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) in defaults]
    previous = {sig: signal.signal(sig, stop) for sig in ours}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def disk_error(err: OSError, out: Path) -> UserError | None:
    """A full disk or an unwritable folder as a UserError naming the file; None for any other OSError."""
    if err.errno not in DISK_ERRNOS:
        return None
    where = err.filename or out
    return UserError(
        f"{where}: {DISK_ERRNOS[err.errno]} ({os.strerror(err.errno)}); free space or fix its permissions (or choose another "
        "out= / paths.runs=), then rerun (finished work is kept, nothing half-written)"
    )


def _note_failed(out: Path, text: str) -> None:
    try:
        write_text_atomic(out / FAILED_FILE, text)
    except OSError:  # the disk that failed the run may not take the note either
        pass


def run_task(
    task: Callable[[DictConfig], Any], cfg: DictConfig, resumable: bool, inputs: Callable[[DictConfig], tuple[str, dict]] | None = None
) -> Any:
    """Run `task(cfg)` in its run folder (Hydra's output dir): one writer at a time (models/lock.py), the
    identity check and DONE of a resumable run, and every way it can end as described in the module
    docstring: a user's mistake or a disk fault in one line (exit 2), a stop signal in one line saying
    the run will resume (exit 128 + signal), a bug as a traceback (FAILED holds it)."""
    out = output_dir()
    try:
        with _stop_on_signals():
            try:
                with run_lock(out):
                    return _run_locked(task, cfg, resumable, out, inputs)
            except OSError as err:
                user_error = disk_error(err, out)
                if user_error is None:
                    raise
                _fail(out, user_error)
                return None
            except UserError as err:  # the folder's lock is another writer's: leave the folder alone
                _fail(out, err, write_failed=False)
                return None
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        _note_failed(out, f"stopped by {name} before it finished; rerun the same command to resume\n")
        print(f"stopped by {name}: {out} is not finished; rerun the same command to resume it (finished work is kept)", file=sys.stderr)
        sys.exit(128 + stop.signum)


def _run_locked(
    task: Callable[[DictConfig], Any], cfg: DictConfig, resumable: bool, out: Path, inputs: Callable[[DictConfig], tuple[str, dict]] | None
) -> Any:
    done = out / DONE_FILE
    if resumable:
        try:
            named_inputs = inputs(cfg) if inputs is not None else None
            config = identity_config(cfg, named_inputs)
            action = check_identity(out, config, bool(cfg.get("force", False)), named_inputs and named_inputs[0])
        except UserError as err:
            # The folder belongs to another config (or the inputs cannot be resolved): change nothing in it,
            # except a FAILED note in a multirun, so the sweep's summary names the job (its DONE, records and
            # .hydra/ stay).
            _fail(out, err, write_failed=is_multirun())
            return None
        if action == "skip":
            _skip(out)
            return None
        if action == "clean":
            log.info("force=true: removing the earlier outputs in %s", out)
            _clear_folder(out)
        if action == "update":  # the finished records stay for the stage to reuse; the run is unfinished until DONE
            log.info("%s: its input files changed; reusing the records of those already scored", out)
            done.unlink()
        else:
            (out / RESULTS_FILE).unlink(missing_ok=True)  # an unfinished attempt's records are never valid
        write_text_atomic(out / RUN_CONFIG_FILE, json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")
    _save_hydra_files(out, cfg)
    (out / FAILED_FILE).unlink(missing_ok=True)
    try:
        result = task(cfg)
    except UserError as err:
        _fail(out, err)
        return None
    except Exception as err:
        if isinstance(err, OSError) and disk_error(err, out) is not None:
            raise  # run_task says it in one line
        _note_failed(out, traceback.format_exc())
        if is_multirun():
            log.exception("job failed (traceback in %s)", out / FAILED_FILE)
            return None
        raise
    if resumable:
        write_text_atomic(done, config_hash(config) + "\n")
        report_outcome("run", out)
    return result


def _skip(out: Path) -> None:
    (out / FAILED_FILE).unlink(missing_ok=True)  # a refused launch's note; the finished run stands
    log.info("skipping %s: already finished with this config (DONE exists; pass force=true to rerun)", out)
    report_outcome("skip", out)


def skip_finished_job(sweep_config: DictConfig, inputs: Callable[[DictConfig], tuple[str, dict]] | None) -> bool:
    """A launcher's check before it submits a sweep job (hydra_plugins/model_soups_launcher.py): True when the job's
    run folder already finished with this config, reported as the job itself would report it (`_skip`).

    Computed as the job computes it: the run folder and the task config as Hydra's `run_job` makes them from the
    job's sweep config, then `identity_config` and `check_identity`. Anything else (a fresh or unfinished run,
    force=true, another config, an error while checking) is False: the job is submitted and decides, and reports."""
    saved = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(sweep_config)
        out = Path(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir))
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = os.path.abspath(out)
        HydraConfig.instance().set_config(sweep_config)
        task_cfg = copy.deepcopy(sweep_config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        named_inputs = inputs(task_cfg) if inputs is not None else None
        config = identity_config(task_cfg, named_inputs)
        action = check_identity(out, config, bool(task_cfg.get("force", False)), named_inputs and named_inputs[0])
    except Exception:  # noqa: BLE001 - the submitted job meets the same error and reports it in its own words
        return False
    finally:
        HydraConfig.instance().cfg = saved
    if action != "skip":
        return False
    _skip(out)
    return True


def stage_entry(
    config_name: str,
    task: Callable[[DictConfig], Any],
    resumable: bool = True,
    check: Callable[[DictConfig], Any] | None = None,
    inputs: Callable[[DictConfig], tuple[str, dict[str, str]]] | None = None,
) -> Callable[[], None]:
    """Build `main()` for `python -m <stage>` from a task function `task(cfg)`; `check(cfg)` refuses bad
    values before any work (see `precheck_overrides`). `inputs(cfg)` -> (config key, {file: sha256 prefix}):
    the run's identity holds the files the key resolves to, not its text (eval: `checkpoints=`)."""

    def run(cfg: DictConfig) -> Any:
        return run_task(task, cfg, resumable, inputs)

    # our launchers ask it before they submit a job: a finished run starts no process (no SLURM task)
    run.skip_finished_job = functools.partial(skip_finished_job, inputs=inputs) if resumable else None
    hydra_main = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(run)

    def main() -> None:
        if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
            try:
                text = stage_help(config_name, sys.argv[1:])
            except Exception as err:  # any composition failure is a user's config mistake
                print(f"error: {one_line(err)}", file=sys.stderr)
                sys.exit(2)
            try:
                print(text, flush=True)
            except BrokenPipeError:  # `--help | head`: the reader left (Python's documented recipe: no error at exit)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        precheck_overrides(config_name, sys.argv[1:], check)
        hydra_main()

    return main


class SweepNaming(Callback):
    """Before a multirun's jobs start, tell them which keys the sweep varies (see `job_name`).

    The jobs read it from the environment, which the basic launcher shares and submitit passes on."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
        swept |= {str(k) for k in (config.hydra.sweeper.get("params") or {})}
        os.environ[SWEPT_KEYS_ENV] = ",".join(sorted(swept))


class FailureSummary(Callback):
    """At the end of a sweep, name the jobs that failed and exit non-zero if any did."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(p.parent for p in sweep_dir.glob(f"*/{FAILED_FILE}"))
        if failed:
            names = ", ".join(p.name for p in failed[:10])
            print(f"error: {len(failed)} job(s) failed in {sweep_dir}: {names} (see FAILED in each folder)", file=sys.stderr)
            sys.exit(1)
