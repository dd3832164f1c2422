"""`python -m plots`: see `python -m plots --help`."""

from omegaconf import DictConfig

from models.cli import output_dir
from models.cli import stage_entry
from models.results import load_results, wide_table


def run(cfg: DictConfig) -> None:
    table = wide_table(load_results(cfg.results))
    path = output_dir() / "models.csv"
    table.to_csv(path)
    print(f"wrote {path} ({len(table)} models)")


main = stage_entry("plots", run, resumable=False)

if __name__ == "__main__":
    main()
