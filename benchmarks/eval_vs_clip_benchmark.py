"""Images/s of our eval against clip_benchmark: same model, same folders, same CPU, run side by side.

A miniature ImageNet val tree (JPEGs of `--size` px) and a zero-shot open_clip model (the tiny miniature
ViT, or `--arch`, random weights). Timed: the pass over the images (decode, transform, forward, argmax) of
`models.evaluate.score_models` and of clip_benchmark's `run_classification` (float32, its --no_amp);
the zero-shot heads are built beforehand for both. Goal: ratio ours/clip_benchmark >= 1.0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import open_clip
import torch
from torch.utils.data import DataLoader

from benchmarks import miniature_parser, miniature_val
from datasets import eval_sets
from models.checkpoint import CheckpointMeta, save_checkpoint, to_open_clip_state_dict
from models.classifier import classifier_from_clip, load_classifier, zeroshot_head_weight
from models.evaluate import score_models

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = miniature_parser(__doc__.splitlines()[0], per_class=2, repeats=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

    with miniature_val(args, "eval_vs_clip_benchmark_") as (arch, mini, folder):
        torch.manual_seed(0)
        clip_model, _, transform = open_clip.create_model_and_transforms(arch)
        tokenizer = open_clip.get_tokenizer(arch)
        clip_model.eval()
        templates = list(open_clip.OPENAI_IMAGENET_TEMPLATES[:2])
        head = zeroshot_head_weight(clip_model, tokenizer, list(open_clip.IMAGENET_CLASSNAMES), templates)
        checkpoint = save_checkpoint(
            folder / "zs.safetensors",
            classifier_from_clip(clip_model, head).state_dict(),
            CheckpointMeta(arch, None, 1000, "imagenet1k", "zeroshot"),
        )
        ours_model, _ = load_classifier(checkpoint)
        peer_model, _, peer_transform = open_clip.create_model_and_transforms(arch)
        peer_model.load_state_dict(to_open_clip_state_dict(ours_model.state_dict(), clip_model.state_dict()))
        peer_model.eval()
        peer_classifier = zero_shot_classifier(
            peer_model, tokenizer, list(open_clip.IMAGENET_CLASSNAMES), [t("{c}") for t in templates], "cpu", amp=False
        )

        data_cfg = {"name": "imagenet", "root": str(mini.root), "heldout": "ImageNet2p", "id": "ImageNet", "shifts": []}
        from omegaconf import OmegaConf

        ours_set = eval_sets(OmegaConf.create(data_cfg), transform, ["ImageNet"])[0]
        peer_set = build_dataset(
            "imagenet1k-unverified", root=str(mini.root / "imagenet"), transform=peer_transform, split="test", download=False
        )
        n = len(ours_set.dataset)
        best = {"ours": float("inf"), "clip_benchmark": float("inf")}

        def ours() -> None:
            nonlocal scores
            (scores,) = score_models([ours_model], ours_set, batch_size=args.batch_size, workers=args.workers, amp=False)

        def peer() -> None:
            nonlocal logits, targets
            loader = DataLoader(peer_set, batch_size=args.batch_size, num_workers=args.workers)
            logits, targets = run_classification(peer_model, peer_classifier, loader, "cpu", amp=False)

        scores = logits = targets = None
        for repeat in range(args.repeats):
            # alternate who goes first, so neither always meets a cold cache or a busy neighbour first
            for name in ("ours", "clip_benchmark") if repeat % 2 == 0 else ("clip_benchmark", "ours"):
                start = time.perf_counter()
                ours() if name == "ours" else peer()
                best[name] = min(best[name], time.perf_counter() - start)
        peer_correct = int((logits.argmax(dim=1) == targets).sum())
        rates = {k: n / v for k, v in best.items()}
        ratio = rates["ours"] / rates["clip_benchmark"]
        print(f"{n} images of {args.size} px, {arch}, batch {args.batch_size}, workers {args.workers}, threads {args.threads}")
        print(f"ours           {rates['ours']:8.1f} images/s  (top1 {scores.top1:.4f})")
        print(f"clip_benchmark {rates['clip_benchmark']:8.1f} images/s  (top1 {peer_correct / n:.4f})")
        print(f"ratio ours / clip_benchmark = {ratio:.2f} (goal >= 1.0); same correct count: {scores.correct == peer_correct}")
        RESULTS.mkdir(exist_ok=True)
        record = {
            "images": n,
            "size": args.size,
            "arch": arch,
            "images_per_s": rates,
            "ratio": ratio,
            "same_correct": scores.correct == peer_correct,
            **vars(args),
        }
        (RESULTS / "eval_vs_clip_benchmark.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
