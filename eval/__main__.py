"""`python -m eval`: see `python -m eval --help`."""

from omegaconf import DictConfig

from eval.checkpoints import checkpoint_digests
from models.cli import stage_entry


def run(cfg: DictConfig) -> object:
    from eval.runner import run as evaluate  # imported where it runs: a sweep's launcher (and --help) load no open_clip

    return evaluate(cfg)


main = stage_entry("eval", run, inputs=lambda cfg: checkpoint_digests(cfg.checkpoints))

if __name__ == "__main__":
    main()
