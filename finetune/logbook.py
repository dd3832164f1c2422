"""Where per-epoch metrics go: `metrics.jsonl` and `metrics.csv` in the run folder, and wandb if asked.

wandb writes under `<run folder>/wandb`; with WANDB_MODE=offline (or logger.mode=offline) nothing
touches the network and `wandb sync <run folder>/wandb/offline-run-*` uploads it later.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.atomic import write_text_atomic
from models.errors import UserError

METRICS_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"


class Logbook:
    def __init__(self, run_dir: Path, logger_cfg: Mapping[str, Any], run_name: str, config: dict[str, Any], enabled: bool = True):
        self.run_dir, self.enabled, self.wandb_run = Path(run_dir), enabled, None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if enabled and logger_cfg.get("name", "none") == "wandb":
            self.wandb_run = start_wandb(self.run_dir, logger_cfg, run_name, config)

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(dict(metrics), sort_keys=True)
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        write_csv(self.run_dir / METRICS_FILE, self.run_dir / CSV_FILE)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=int(metrics["step"]))

    def rewind(self, step: int) -> None:
        """Forget epochs logged after `step`: a run restarting from a state saved at `step` logs them again."""
        path = self.run_dir / METRICS_FILE
        if not self.enabled or not path.exists():
            return
        kept = [row for row in read_metrics(path) if row["step"] <= step]
        write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
        write_csv(path, self.run_dir / CSV_FILE)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(metrics))

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_csv(jsonl_path: Path, csv_path: Path) -> None:
    """The JSONL as a CSV (rewritten whole, atomically: it is a view, the JSONL is the record)."""
    rows = read_metrics(jsonl_path)
    fields = sorted({k for row in rows for k in row})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, buffer.getvalue())


def start_wandb(run_dir: Path, logger_cfg: Mapping[str, Any], run_name: str, config: dict[str, Any]):
    import wandb

    mode = str(logger_cfg.get("mode") or os.environ.get("WANDB_MODE", "online"))
    # A stable id per run folder, so a resumed run continues the same wandb run.
    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    try:
        return wandb.init(
            project=logger_cfg.get("project"),
            entity=logger_cfg.get("entity"),
            name=run_name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(run_dir),
            config=config,
            settings=wandb.Settings(silent=True),
        )
    except Exception as err:  # wandb raises many types (auth, network, usage); all mean "cannot log"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"logger=wandb: cannot start wandb in mode {mode!r} ({first}); with no network set WANDB_MODE=offline") from None
