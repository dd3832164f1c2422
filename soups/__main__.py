"""`python -m soups`: see `python -m soups --help`. `python -m soups diagnose ingredients=...` runs the
basin check (soups/diagnose.py) into runs/<name>/soups/diagnose."""

import sys

from omegaconf import DictConfig

from models.cli import output_dir, overrides, stage_entry
from soups.config import soup_params

# The stage's work is imported where it runs: a sweep's launcher (and --help) loads neither open_clip nor the data.


def run(cfg: DictConfig) -> None:
    from soups.stage import run_soup

    run_soup(cfg, output_dir(), overrides())


def diagnose(cfg: DictConfig) -> None:
    from soups.diagnose import run_diagnose

    run_diagnose(cfg, output_dir())


def main() -> None:
    if sys.argv[1:2] == ["diagnose"]:
        del sys.argv[1]
        if not any(arg.startswith("run_name=") for arg in sys.argv[1:]):
            sys.argv.append("run_name=diagnose")
        stage_entry("soups", diagnose)()
    else:
        stage_entry("soups", run, check=lambda cfg: soup_params(cfg.soup))()


if __name__ == "__main__":
    main()
