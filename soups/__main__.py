"""`python -m soups`: see `python -m soups --help`."""

from omegaconf import DictConfig

from models.cli import output_dir, overrides, stage_entry
from soups.pipeline import run_soup


def run(cfg: DictConfig) -> None:
    run_soup(cfg, output_dir(), overrides())


main = stage_entry("soups", run)

if __name__ == "__main__":
    main()
