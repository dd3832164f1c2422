"""Our submitit launchers: they submit only the jobs that have work to do, and `local` runs them in waves.

- `hydra/launcher=local`: submitit's local launcher, at most `parallel` jobs at once. submitit_local starts every
  job of a sweep at once: nine soup jobs on two cores ran at a load of 15 and took three times the estimate. This
  launcher submits the jobs in waves of `parallel` (default: the cores this process may use,
  `models.evaluate.available_cores`), each wave ending before the next starts, and is otherwise submitit_local
  (each job its own process, its log in `.submitit/`).
- `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): submitit's SLURM launcher.
- Both first ask the stage (`models.cli.skip_finished_job`, through the task function) whether a job's run folder
  already finished with this config; such a job is reported as skipped and not submitted. Relaunching a sweep of
  72 jobs of which 70 finished queues 2 SLURM tasks, not 72 that each start, import and skip (about 7 s of CPU
  apiece here, a queue wait on a cluster). Anything in doubt is submitted, and the job decides as before.

Hydra instantiates launchers only from the `hydra_plugins` namespace package, hence this folder; models.cli
imports it, so the config is registered before any stage composes its config.

    python -m soups -m soup=uniform,greedy,... hydra/launcher=local [hydra.launcher.parallel=4]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import open_dict


def launch_unfinished(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, submit: Callable[[list, int], Sequence[JobReturn]]
) -> list[JobReturn]:
    """`submit(overrides, first_index)` for the jobs whose run is not finished; a finished one's JobReturn says so."""
    skip = getattr(launcher.task_function, "skip_finished_job", None)  # None: a stage without resumable runs
    finished: dict[int, JobReturn] = {}
    for number, overrides in enumerate(job_overrides if skip is not None else ()):
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = initial_job_idx + number
        if skip(sweep_config):
            finished[number] = JobReturn(overrides=list(overrides), working_dir=os.getcwd(), status=JobStatus.COMPLETED, _return_value=None)
    pending = [o for number, o in enumerate(job_overrides) if number not in finished]
    submitted = iter(submit(pending, initial_job_idx) if pending else ())  # job numbers only name the .submitit logs
    return [finished[number] if number in finished else next(submitted) for number in range(len(job_overrides))]


@dataclasses.dataclass
class LimitedLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.model_soups_launcher.LimitedLocalLauncher"
    parallel: int | None = None  # jobs at once; null: the cores this process may use


class LimitedLocalLauncher(LocalLauncher):
    def __init__(self, parallel: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        if parallel is not None and parallel < 1:
            raise ValueError(f"hydra.launcher.parallel must be >= 1, got {parallel}")
        self.parallel = parallel

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        return launch_unfinished(self, job_overrides, initial_job_idx, self._in_waves)

    def _in_waves(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        from models.evaluate import available_cores

        wave = self.parallel or available_cores()
        results: list[Any] = []
        for start in range(0, len(job_overrides), wave):
            results += super().launch(job_overrides[start : start + wave], initial_job_idx + start)
        return results


class UnfinishedSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        return launch_unfinished(self, job_overrides, initial_job_idx, super().launch)


def register_launcher() -> None:
    ConfigStore.instance().store(group="hydra/launcher", name="local", node=LimitedLocalConf)
