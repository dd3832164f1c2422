"""`python -m eval`: see `python -m eval --help`."""

from eval.checkpoints import checkpoint_digests
from eval.runner import run
from models.cli import stage_entry

main = stage_entry("eval", run, inputs=lambda cfg: checkpoint_digests(cfg.checkpoints))

if __name__ == "__main__":
    main()
