"""`python -m datasets.world [task=zeroshot|pretrain]`: the world, its foundation and zero-shot table."""

from datasets.world.foundation import build_foundation, zero_shot_table
from models.cli import stage_entry


def task(cfg):
    if cfg.task == "pretrain":
        build_foundation(cfg)
    elif cfg.task != "zeroshot":
        from models.errors import UserError

        raise UserError(f"task: unknown task {cfg.task!r}; expected zeroshot or pretrain")
    return zero_shot_table(cfg)


main = stage_entry("world", task, resumable=False)

if __name__ == "__main__":
    main()
