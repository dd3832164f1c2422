"""`python -m finetune`: see `python -m finetune --help`."""

from omegaconf import DictConfig

from models.cli import stage_entry


def run(cfg: DictConfig) -> None:
    from finetune.train import finetune  # imported here so `--help` stays fast

    finetune(cfg)


def check(cfg: DictConfig) -> None:
    from finetune.train import resolve_recipe

    resolve_recipe(cfg)  # refuse settings that cannot train before the run folder is touched


main = stage_entry("finetune", run, check=check)

if __name__ == "__main__":
    main()
