"""`hydra/launcher=local`: submitit's local launcher, at most `parallel` jobs at once.

submitit_local starts every job of a sweep at once: nine soup jobs on two cores ran at a load of 15 and
took three times the estimate. This launcher submits the jobs in waves of `parallel` (default: the cores
this process may use, `models.evaluate.available_cores`), each wave ending before the next starts, and
is otherwise submitit_local (each job its own process, its log in `.submitit/`).

Hydra instantiates launchers only from the `hydra_plugins` namespace package, hence this folder; models.cli
imports it, so the config is registered before any stage composes its config.

    python -m soups -m soup=uniform,greedy,... hydra/launcher=local [hydra.launcher.parallel=4]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher


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
        from models.evaluate import available_cores

        wave = self.parallel or available_cores()
        results: list[Any] = []
        for start in range(0, len(job_overrides), wave):
            results += super().launch(job_overrides[start : start + wave], initial_job_idx + start)
        return results


def register_launcher() -> None:
    ConfigStore.instance().store(group="hydra/launcher", name="local", node=LimitedLocalConf)
