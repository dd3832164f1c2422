"""`python -m pipeline EXPERIMENT [--print] [--from N] [OVERRIDE ...]`: run an experiment's stages in order.

The steps are the `pipeline:` key of conf/experiment/EXPERIMENT.yaml (pipeline/steps.py reads them).

Overrides (`data.root=ROOT`, `model=vit_b32`, `name=mydata`, ...) go to every stage; `sweep=...` to the
sweep step only. A step's own arguments win: an override of a key the step sets itself (the inits step's
`finetune.epochs=0`) is not passed to that step, and the step's header says so. `--print` shows each
step's command as it will run. Overrides that change the outputs send the tables and figures to
`runs/<name>/results/` rather than the experiment's committed `results/<experiment>/`. `--detach` submits
this command as a one-CPU SLURM job and returns (pipeline/detach.py). `python -m pipeline folder data.root=ROOT` runs the whole pipeline on your
own dataset.

Every stage skips runs that finished (their folder holds DONE), so a second run takes seconds and a
run after a kill resumes where it stopped. Progress says which step runs, and the time left is
estimated from this machine's last timings of each step, or from the recorded 2-core estimates scaled
by this machine's pace on the steps done so far.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from models.atomic import write_text_atomic
from models.cli import OUTCOMES_ENV
from models.errors import UserError
from pipeline.detach import detach
from pipeline.steps import Step, experiment_steps, found_finished, seeds_steps, split_overrides, time_left

ROOT = Path(__file__).resolve().parent.parent


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _short(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _withheld(step: Step) -> str:
    if not step.withheld:
        return ""
    return f"  (the step sets these itself, so not passed: {' '.join(step.withheld)})"


def at_chance_summary(run_root: Path) -> list[str]:
    """One line per table and basin check under the experiment's runs that found models at chance: the tables'
    `note` column (plots/report.py) and the basin check's `at_chance` (soups/diagnose.py)."""
    lines = []
    for table in sorted(run_root.rglob("main_table.csv")):
        with open(table, newline="") as handle:
            rows = [row["method"] for row in csv.DictReader(handle) if row.get("note", "").startswith("at chance")]
        if rows:
            lines.append(f"{_short(table)}: {len(rows)} rows at chance ({', '.join(rows)}): these models cannot do this task")
    for basin in sorted(run_root.rglob("basin.json")):
        report = json.loads(basin.read_text())
        if report.get("at_chance"):
            lines.append(
                f"{_short(basin)}: {len(report['at_chance'])} of {len(report['ingredients'])} ingredients at chance on the held-out set"
            )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="which experiment's sequence to run: conf/experiment/EXPERIMENT.yaml, its pipeline: key")
    parser.add_argument("--print", action="store_true", help="print the stage commands instead of running them")
    parser.add_argument("--from", dest="start", type=int, default=1, help="start at step N (1-based)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="run the experiment once per sweep seed (0 is the plain run), then write mean +- sd of each finding to <pipeline.results>_seeds/ (results/demo_seeds/ for the demo)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="submit this pipeline as a one-CPU SLURM job (sbatch) and return; the job's log is runs/<name>/pipeline-<id>.log",
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="ARG",
        help="with --detach: an sbatch option for the pipeline's job, e.g. --sbatch=--time=3-00:00:00 --sbatch=--partition=cpu",
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides passed to every stage (data.root=..., model=...)")
    return parser


def _submit(args: argparse.Namespace, extra: list[str], runs: Path, name: str) -> int:
    """--detach: this same command (without --detach) as a one-CPU SLURM job."""
    again = [args.experiment, *(["--from", str(args.start)] if args.start != 1 else []), *extra]
    again += ["--seeds", *map(str, args.seeds)] if args.seeds else []
    try:
        job = detach([sys.executable, "-m", "pipeline", *again], ROOT, runs / name, f"pipeline-{name}", args.sbatch)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"submitted the {args.experiment} pipeline as SLURM job {job}; its log: {runs / name}/pipeline-{job}.log "
        f"(squeue -j {job}; scancel {job} stops it, and the same command resumes)"
    )
    return 0


def _run_step(argv: list[str], outcomes_path: Path) -> tuple[int, str]:
    """Run one step's command; its exit code and the skip|run lines its runs appended to `outcomes_path` (on the
    runs folder, which the cluster's jobs share). A step refused before any work leaves no empty runs folder behind."""
    new_folders = [f for f in (*reversed(outcomes_path.parent.parents), outcomes_path.parent) if not f.exists()]
    outcomes_path.parent.mkdir(parents=True, exist_ok=True)
    outcomes_path.write_text("")
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, OUTCOMES_ENV: str(outcomes_path)})
    outcomes = outcomes_path.read_text()
    outcomes_path.unlink()
    for folder in reversed(new_folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
    return result.returncode, outcomes


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    runs = Path(os.environ.get("MODEL_SOUPS_RUNS", ROOT / "runs"))
    cache = Path(os.environ.get("MODEL_SOUPS_CACHE", ROOT / ".cache"))
    # stages run from the repository root: a dataset folder given relative to here must still be found
    extra = [f"data.root={Path(a.split('=', 1)[1]).resolve()}" if a.startswith("data.root=") else a for a in args.overrides]
    try:
        if args.seeds and extra:
            raise UserError(f"--seeds runs the plain {args.experiment} once per seed; it takes no overrides ({extra[0]})")
        if args.seeds:
            steps = seeds_steps(args.experiment, args.seeds, _short(runs), _short(cache))
        else:
            steps = experiment_steps(args.experiment, _short(runs), _short(cache), extra)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print:
        for number, step in enumerate(steps, start=1):
            print(f"# {number}. {step.name}{_withheld(step)}\n{shlex.join(step.argv)}\n")
        return 0
    name = split_overrides(extra)[0] or args.experiment
    if args.detach:
        return _submit(args, extra, runs, name)

    timings_path = runs / name / "pipeline_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    earlier, timed_now = dict(timings), {}
    started = time.monotonic()
    for number, step in enumerate(steps, start=1):
        if number < args.start:
            continue
        left = time_left(steps, number - 1, earlier, timed_now)
        print(
            f"\n=== [{number}/{len(steps)}] {step.name}  (elapsed {_clock(time.monotonic() - started)}, about {_clock(left)} left)\n"
            f"    {shlex.join(step.argv)}{_withheld(step)}",
            flush=True,
        )
        step_start = time.monotonic()
        code, outcomes = _run_step([sys.executable if a == "python" else a for a in step.argv], timings_path.parent / ".step_outcomes")
        if code == 2:  # a user's mistake: the stage has said why in one line; nothing was kept
            return 2
        if code != 0:
            print(
                f"error: step {number} ({step.name}) failed with exit code {code}; fix it and rerun (finished work is kept)",
                file=sys.stderr,
            )
            return code
        if found_finished(outcomes):
            print(f"    step {number}: every run had finished with this config; nothing was redone", flush=True)
        else:  # a step that skipped finished work keeps its real timing and sets no pace
            timed_now[step.name] = timings[step.name] = round(time.monotonic() - step_start, 1)
            write_text_atomic(timings_path, json.dumps(timings, indent=1))
    # ru_maxrss of waited-for children: the largest single stage process (KiB on Linux).
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(
        f"\n=== {args.experiment}: all {len(steps)} steps done in {_clock(time.monotonic() - started)}; peak RSS of a stage {peak_gib:.2f} GiB"
    )
    for line in at_chance_summary(runs / name):
        print(f"warning: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
