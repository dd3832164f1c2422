"""Speed and memory measurements, reported as ratios against a baseline run side by side."""

import argparse


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
