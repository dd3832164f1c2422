"""K models with shared decoding against K separate evals (the greedy-soup / ensemble case).

Shared: one pass over the images, every batch decoded and transformed once and run through all K models
(`eval.share_decoding=true`). Separate: K passes, one model each. Goal: shared <= 0.6x the separate time.
How much sharing saves depends on the split between decoding and the forward pass: the tiny default
model makes decoding dominate (as a GPU does for ViT-B/32); a big model on a CPU makes the forward dominate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import open_clip
import torch
from omegaconf import OmegaConf

from benchmarks import miniature_parser, miniature_val
from datasets import eval_sets
from models.classifier import classifier_from_clip
from models.evaluate import score_models

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = miniature_parser(__doc__.splitlines()[0], per_class=1, repeats=2)
    parser.add_argument("--models", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with miniature_val(args, "eval_shared_decoding_") as (arch, mini, folder):
        models = []
        for seed in range(args.models):
            torch.manual_seed(seed)
            clip_model, _, transform = open_clip.create_model_and_transforms(arch)
            models.append(classifier_from_clip(clip_model, head_weight=torch.randn(1000, clip_model.visual.output_dim)).eval())
        cfg = OmegaConf.create({"name": "imagenet", "root": str(mini.root), "heldout": "ImageNet2p", "id": "ImageNet", "shifts": []})
        eval_set = eval_sets(cfg, transform, ["ImageNet"])[0]
        loader = {"batch_size": args.batch_size, "workers": args.workers, "amp": False}
        best = {"shared": float("inf"), "separate": float("inf")}
        for _ in range(args.repeats):
            start = time.perf_counter()
            shared = score_models(models, eval_set, **loader)
            best["shared"] = min(best["shared"], time.perf_counter() - start)
            start = time.perf_counter()
            separate = [score_models([model], eval_set, **loader)[0] for model in models]
            best["separate"] = min(best["separate"], time.perf_counter() - start)
        same = [s.correct for s in shared] == [s.correct for s in separate]
        ratio = best["shared"] / best["separate"]
        n = len(eval_set.dataset)
        print(
            f"{args.models} x {arch} on {n} images of {args.size} px, batch {args.batch_size}, workers {args.workers}, threads {args.threads}"
        )
        print(f"shared decoding {best['shared']:7.2f} s   separate evals {best['separate']:7.2f} s")
        print(f"ratio shared / separate = {ratio:.2f} (goal <= 0.6); identical counts: {same}")
        RESULTS.mkdir(exist_ok=True)
        record = {"images": n, "arch": arch, "seconds": best, "ratio": ratio, "identical_counts": same, **vars(args)}
        (RESULTS / "eval_shared_decoding.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
