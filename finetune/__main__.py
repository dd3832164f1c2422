"""`python -m finetune`: see `python -m finetune --help`."""

from omegaconf import DictConfig

from models.cli import stage_entry
from models.errors import UserError


def run(cfg: DictConfig) -> None:
    raise UserError("the finetune stage is not implemented yet (see the project's issues)")


main = stage_entry("finetune", run)

if __name__ == "__main__":
    main()
