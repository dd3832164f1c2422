"""`python -m finetune`: see `python -m finetune --help`."""

from omegaconf import DictConfig

from models.cli import stage_entry


def run(cfg: DictConfig) -> None:
    from finetune.train import finetune  # imported here so `--help` stays fast

    finetune(cfg)


main = stage_entry("finetune", run)

if __name__ == "__main__":
    main()
