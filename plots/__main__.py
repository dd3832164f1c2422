"""`python -m plots`: see `python -m plots --help`."""

from pathlib import Path

from omegaconf import DictConfig

from models.cli import stage_entry
from models.errors import UserError
from plots.inputs import load_any
from plots.report import published_table_path, record_figures, write_beside, write_findings, write_table

RECORD_FIGURES = ("all", "table", "findings", "fig1", "greedy", "wise_ft")
CHECKPOINT_FIGURES = ("checkpoints", "landscape", "angle", "approx", "soup_size")


def run(cfg: DictConfig) -> None:
    figure = str(cfg.figure)
    if figure not in RECORD_FIGURES + CHECKPOINT_FIGURES:
        raise UserError(f"figure={figure}: unknown; choose from {', '.join(RECORD_FIGURES + CHECKPOINT_FIGURES)}")
    out = Path(cfg.out)  # tables and figures only; Hydra's own files stay in its run folder
    out.mkdir(parents=True, exist_ok=True)
    beside = published_table_path(str(cfg.plots.beside), cfg.paths.results) if cfg.plots.get("beside") else None
    records = load_any(cfg.results)
    models, sets, picked = write_table(records, out, cfg.plots.paper)
    if beside is not None:
        print(write_beside(models, sets, picked, beside, out), end="")
    skipped: list[str] = []
    if figure in ("all", "findings"):
        skipped += write_findings(Path(cfg.results), picked, sets, out, list(cfg.plots.formats), models)
    if figure in RECORD_FIGURES and figure != "table":
        skipped += record_figures(records, Path(cfg.results), models, sets, out, list(cfg.plots.formats), figure)
    if figure in CHECKPOINT_FIGURES:
        from plots.compute import checkpoint_figures  # torch, open_clip and the datasets load only when needed

        skipped += checkpoint_figures(cfg, records, models, sets, out, figure)
    for reason in skipped:
        print(f"skipped {reason}")
    print(f"wrote {out}")


main = stage_entry("plots", run, resumable=False)

if __name__ == "__main__":
    main()
