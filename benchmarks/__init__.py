"""Speed and memory measurements, reported as ratios against a baseline run side by side."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets.imagenet_miniature import Miniature


def miniature_parser(description: str, per_class: int, repeats: int) -> argparse.ArgumentParser:
    """The options of the benchmarks that evaluate on a generated ImageNet miniature (the tiny ViT by default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--per-class", type=int, default=per_class, help="images per class (1000 classes)")
    parser.add_argument("--size", type=int, default=160, help="image side in px (real ImageNet photos are ~400)")
    parser.add_argument("--arch", default=None, help="open_clip architecture (default: the tiny miniature ViT)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=repeats, help="the fastest run counts")
    return parser


@contextlib.contextmanager
def miniature_val(args: argparse.Namespace, prefix: str) -> Iterator[tuple[str, Miniature, Path]]:
    """(arch, miniature, folder): the architecture to time (`--arch`, else the tiny miniature ViT, registered
    with open_clip) and a generated miniature ImageNet val tree of `--per-class` images per class at `--size`
    px, in a temporary folder that is removed afterwards."""
    from datasets.imagenet_miniature import make_miniature, register_tiny_vit

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        arch = args.arch or register_tiny_vit()
        yield arch, make_miniature(folder / "data", sets=("val",), per_class=args.per_class, size=args.size), folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
