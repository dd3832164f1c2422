"""`python -m datasets.folder data.root=ROOT [overrides]`: check an image-folder dataset, draw and save its
held-out split, and list its sets. The pipeline's first step; it writes nothing but `data.split_file`, and
only once every check has passed (a bad layout is one line and exit code 2)."""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir

from datasets.folder import TRAIN, class_info, prepare, sets_on_disk
from models.classifier import check_prompt_words
from models.cli import CONF_DIR, exit_code, precheck_overrides
from models.errors import UserError
from models.factory import get_tokenizer


def summary(cfg) -> str:
    layout, mask, split = prepare(cfg.data)
    info = class_info(cfg.data)
    check_prompt_words(get_tokenizer(cfg.model.arch), info.classnames, info.templates)
    held = int(mask.sum()) if mask is not None else 0
    sizes = {TRAIN: len(layout.files[TRAIN]) - held, cfg.data.heldout: held or len(layout.files.get("val", ()))}
    lines = [
        f"{layout.root}: {len(info.classnames)} classes ({', '.join(info.classnames[:8])}{', ...' if len(info.classnames) > 8 else ''})"
    ]
    lines.append(f"  {TRAIN}: {sizes[TRAIN]} images for fine-tuning")
    for name, role in sets_on_disk(cfg.data):
        n = sizes[name] if role == "heldout" else len(layout.files[name])
        lines.append(
            f"  {name} ({role}): {n} images"
            + (f", split {split['split']} saved in {cfg.data.split_file}" if mask is not None and role == "heldout" else "")
        )
    return "\n".join(lines)


def main() -> int:
    argv = sys.argv[1:]
    precheck_overrides("eval", argv)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=argv)

    def check() -> None:
        if cfg.data.name != "folder":
            raise UserError(f"data={cfg.data.name}: this checks image-folder datasets; add data=folder (or experiment=folder)")
        print(summary(cfg))

    return exit_code(check)


if __name__ == "__main__":
    sys.exit(main())
