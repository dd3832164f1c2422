"""`python -m plots`: see `python -m plots --help`."""

from pathlib import Path

from omegaconf import DictConfig

from models.cli import stage_entry
from plots.catalog import FROM_CHECKPOINTS, wanted
from plots.inputs import load_any
from plots.report import published_table_path, record_figures, write_beside, write_findings, write_table


def run(cfg: DictConfig) -> None:
    figure = str(cfg.figure)
    figures = wanted(figure)
    out = Path(cfg.out)  # tables and figures only; Hydra's own files stay in its run folder
    out.mkdir(parents=True, exist_ok=True)
    beside = published_table_path(str(cfg.plots.beside), cfg.paths.results) if cfg.plots.get("beside") else None
    records = load_any(cfg.results)
    accuracies, sets, row_models = write_table(records, out, cfg.plots.paper)
    if beside is not None:
        print(write_beside(accuracies, sets, row_models, beside, out), end="")
    skipped: list[str] = []
    if "findings" in figures:
        skipped += write_findings(Path(cfg.results), row_models, sets, out, list(cfg.plots.formats), accuracies)
    if set(figures) & {"fig1", "greedy", "wise_ft"}:
        skipped += record_figures(records, Path(cfg.results), accuracies, sets, out, list(cfg.plots.formats), figures)
    if set(figures) & set(FROM_CHECKPOINTS):
        from plots.compute import checkpoint_figures  # torch, open_clip and the datasets load only when needed

        skipped += checkpoint_figures(cfg, records, accuracies, sets, out, figures)
    for reason in skipped:
        print(f"skipped {reason}")
    print(f"wrote {out}")


main = stage_entry("plots", run, resumable=False)

if __name__ == "__main__":
    main()
