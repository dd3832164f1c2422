"""`python -m pipeline EXPERIMENT --detach`: the pipeline itself as a small CPU job on SLURM.

With `hydra/launcher=slurm`, each step submits its jobs through submitit and then polls until every
job has ended (that is how Hydra's launchers return each job's result), so the process that runs
`python -m pipeline paper_vitb32` must stay alive for the whole sweep: days of GPU time. `--detach`
submits that process as a one-CPU SLURM job (`sbatch`), prints the job's id and log, and returns. The
job runs the same command without `--detach`; the GPU jobs it submits are ordinary submitit jobs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from models.atomic import write_text_atomic
from models.errors import UserError

# The driver only waits: one core and a little memory. --sbatch=--time=... for a partition's own limits.
DEFAULT_SBATCH = ("--cpus-per-task=1", "--mem=4G")


def sbatch_script(command: list[str], root: Path, log: Path, job_name: str, sbatch_args: list[str]) -> str:
    """The batch script that runs `command` (the pipeline without --detach) from the repository root."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --output={log}"]
    lines += [f"#SBATCH {arg}" for arg in [*DEFAULT_SBATCH, *sbatch_args]]
    lines += [
        "# the pipeline's driver: it submits each step's jobs and waits for them (docs/experiments.md)",
        f"cd {shlex.quote(str(root))}",
        f"exec {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


def already_running(job_name: str) -> str | None:
    """The id of this user's queued or running SLURM job named `job_name` (two drivers of one experiment
    would submit every job twice), or None; None too where squeue is missing."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    found = subprocess.run([squeue, "--noheader", "--format=%i", f"--name={job_name}", f"--user={user}"], capture_output=True, text=True)
    ids = found.stdout.split() if found.returncode == 0 else []
    return ids[0] if ids else None


def detach(command: list[str], root: Path, folder: Path, job_name: str, sbatch_args: list[str]) -> str:
    """Write `folder/pipeline.sbatch`, submit it, and return SLURM's job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError("--detach submits the pipeline through SLURM, but sbatch is not on PATH; run it on a login node, or drop --detach")
    running = already_running(job_name)
    if running:
        raise UserError(
            f"the pipeline {job_name} is already running as SLURM job {running} (squeue -j {running}); wait for it or scancel it"
        )
    script = folder / "pipeline.sbatch"
    log = folder / "pipeline-%j.log"
    write_text_atomic(script, sbatch_script(command, root, log, job_name, sbatch_args))
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, cwd=root, env=os.environ)
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"sbatch refused {script}: {why[-1] if why else f'exit code {result.returncode}'}")
    job_id = result.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not job_id:
        raise UserError(f"sbatch printed no job id for {script}")
    return job_id
