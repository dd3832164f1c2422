"""`python -m eval`: see `python -m eval --help`."""

from omegaconf import DictConfig

from models.cli import stage_entry
from models.errors import UserError


def run(cfg: DictConfig) -> None:
    raise UserError("the eval stage is not implemented yet (see the project's issues)")


main = stage_entry("eval", run)

if __name__ == "__main__":
    main()
