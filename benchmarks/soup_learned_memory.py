"""Peak memory of the learned soup by layer, for N tiny models and N ViT-B/32-size models, extrapolated to 72.

    python -m benchmarks.soup_learned_memory [--tiny 2,4,8,16] [--vitb 2,4] [--steps 2] [--batch 8]

Each point runs in a fresh child process: N random-weight classifiers of the architecture (no download)
are held on the CPU as the stage holds loaded ingredients, and `soups.learned.fit_learned_soup` takes
`--steps` AdamW steps by layer on random images. Reported: peak RSS (VmHWM) and its growth over the
RSS before the ingredients exist. A line through the ViT-B/32 points gives the need for the paper's 72
ingredients (the official script needed a 490 GB RAM node; our goal is <= 64 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def peak_rss_bytes() -> int:
    """VmHWM (not getrusage, whose ru_maxrss survives exec and would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def child(arch: str, count: int, steps: int, batch: int) -> dict:
    import torch

    from models.classifier import ImageClassifier, embed_dim_of
    from models.factory import create_clip
    from soups.learned import LearnedSoup, fit_learned_soup

    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip_model, _, _ = create_clip(arch, None)
    model = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), 1000)
    del clip_model
    size = int(model.visual.image_size[0]) if isinstance(model.visual.image_size, tuple) else int(model.visual.image_size)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    baseline = current_rss_bytes()
    base = model.state_dict()
    # In place (no temporaries), as the stage's reader fills fresh tensors: freed temporaries would stay in
    # glibc's heap and inflate RSS by garbage.
    ingredients = [
        {k: torch.empty_like(v).normal_(0, 0.01).add_(v) if v.is_floating_point() else v for k, v in base.items()} for _ in range(count)
    ]
    soup = LearnedSoup(ingredients, by_layer=True, buffers=[name for name, _ in model.named_buffers()])
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    start = time.perf_counter()
    fit_learned_soup(soup, model, lambda epoch: [(images, labels)] * steps, epochs=1)
    return {
        "arch": arch,
        "n": count,
        "model_mb": model_bytes / 1e6,
        "peak_mb": peak_rss_bytes() / 1e6,
        "growth_mb": (peak_rss_bytes() - baseline) / 1e6,
        "s_per_step": (time.perf_counter() - start) / steps,
    }


def run_child(arch: str, count: int, steps: int, batch: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.soup_learned_memory", "--child", arch, str(count), str(steps), str(batch)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", default="2,4,8,16", help="ingredient counts for the tiny CLIP")
    parser.add_argument("--tiny-arch", default="TinyCLIP")
    parser.add_argument("--vitb", default="2,4", help="ingredient counts for ViT-B-32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--target", type=int, default=72, help="extrapolate to this many ViT-B/32 ingredients")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, count, steps, batch = args.child
        print(json.dumps(child(arch, int(count), int(steps), int(batch))))
        return
    rows = [run_child(args.tiny_arch, int(n), args.steps, args.batch) for n in args.tiny.split(",") if n]
    vitb = [run_child("ViT-B-32", int(n), args.steps, args.batch) for n in args.vitb.split(",") if n]
    print(f"{'arch':<10} {'N':>3} {'model MB':>9} {'peak RSS MB':>12} {'growth MB':>10} {'growth / model':>15} {'s/step':>7}")
    for r in rows + vitb:
        print(
            f"{r['arch']:<10} {r['n']:>3} {r['model_mb']:9.1f} {r['peak_mb']:12.0f} {r['growth_mb']:10.0f} {r['growth_mb'] / r['model_mb']:15.2f} {r['s_per_step']:7.2f}"
        )
    if len(vitb) >= 2:
        (n0, g0, p0), (n1, g1, p1) = [(r["n"], r["growth_mb"], r["peak_mb"]) for r in (vitb[0], vitb[-1])]
        slope = (p1 - p0) / (n1 - n0)
        predicted = p0 + slope * (args.target - n0)
        print(
            f"ViT-B-32: {slope:.0f} MB per extra ingredient; predicted peak RSS for {args.target} ingredients: {predicted / 1e3:.1f} GB (goal <= 64 GB)"
        )


if __name__ == "__main__":
    main()
