"""The world's fine-tuning probe: measure the embedded world's targets (results/world/README.md, 2-4).

Fine-tunes the image tower plus a zero-shot-initialised head on the photo train split with the stage's
own loop (`finetune.train.train_loop`: AdamW, warmup + cosine, label smoothing, BN frozen), for a small
grid of recipes, then scores the fine-tunes, and the weight midpoints of pairs (the uniform soup of two,
`soups.uniform_soup`), on the world's sets. A measuring instrument for the world, run apart from the
pipeline: `python -m finetune.world_probe`.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import itertools
import multiprocessing
import time
from collections.abc import Callable

import numpy as np
import torch

from datasets.world import WorldDataset, normalised_batch
from datasets.world.sets import WorldArrays
from finetune.data import SeededExamples
from finetune.train import Recipe, train_loop
from models.classifier import ImageClassifier
from soups import uniform_soup

SHIFTS = ("photo_v2", "rendition", "sketch", "unusual", "hard")


@dataclasses.dataclass
class ProbeRun:
    """One fine-tune of the probe: the stage's recipe, plus the probe's own augmentation and seed."""

    recipe: Recipe
    shift_px: int = 0  # random translation by up to this many pixels (edge-replicated); 0 = off
    seed: int = 0


# The probe's fixed recipe: batch 128, weight decay 0.1, 30 warmup steps, no clipping, no mixup, fp32, BN frozen.
FIXED = dict(init="zeroshot", weight_decay=0.1, batch_size=128, grad_accum=1, warmup_steps=30, grad_clip=None, mixup=0.0)
FIXED.update(randaug=None, precision="fp32", compile=False, workers=0, save_every_steps=0, save_every_minutes=0, freeze_bn=True)


def probe_recipe(lr: float, label_smoothing: float = 0.0, epochs: int = 4) -> Recipe:
    return Recipe(lr=lr, label_smoothing=label_smoothing, epochs=epochs, **FIXED)


def train_data(train: WorldArrays, preprocess: Callable, shift_px: int, seed: int) -> SeededExamples:
    """The training photos as the stage reads them (the model's own preprocessing), shifted if asked."""
    transform = preprocess
    if shift_px > 0:
        from torchvision import transforms

        size = train.images.shape[1]
        transform = transforms.Compose([transforms.Pad(shift_px, padding_mode="edge"), transforms.RandomCrop(size), preprocess])
    return SeededExamples(WorldDataset(train, transform), seed, random_transform=shift_px > 0)


@torch.no_grad()
def accuracy(classifier: ImageClassifier, data: WorldArrays, batch_size: int = 1000) -> float:
    """Top-1 on a world set, normalising the arrays directly (equal to the model's eval transform at 32 px)."""
    classifier.eval()
    mean, std = classifier.visual.preprocess_cfg["mean"], classifier.visual.preprocess_cfg["std"]
    correct = 0
    for i in range(0, len(data.labels), batch_size):
        logits = classifier(normalised_batch(data.images[i : i + batch_size], mean, std))
        correct += int((logits.argmax(-1).numpy() == data.labels[i : i + batch_size]).sum())
    return correct / len(data.labels)


def probe_run(
    classifier: ImageClassifier,
    train: WorldArrays,
    run: ProbeRun,
    preprocess: Callable,
    heldout: WorldArrays | None = None,
    eval_every: int = 0,
) -> dict:
    """Fine-tune `classifier` in place with the stage's loop; return the held-out curve and the time taken."""
    torch.manual_seed(run.seed)
    curve: list[tuple[int, float]] = []

    def held_out_curve(step: int) -> None:
        if heldout is not None and eval_every and step % eval_every == 0:
            curve.append((step, accuracy(classifier, heldout)))

    start = time.time()
    data = train_data(train, preprocess, run.shift_px, run.seed)
    recipe = dataclasses.replace(run.recipe, progress=False)
    train_loop(classifier, classifier, data, recipe, torch.device("cpu"), after_step=held_out_curve)
    classifier.eval()
    return {"curve": curve, "seconds": time.time() - start}


def midpoint_table(states: list[dict], template: ImageClassifier, data: WorldArrays) -> list[dict]:
    """For every pair: both endpoints' accuracy and the midpoint's (the shared-basin check)."""
    model = copy.deepcopy(template)
    scores = []
    for state in states:
        model.load_state_dict(state)
        scores.append(accuracy(model, data))
    rows = []
    for i, j in itertools.combinations(range(len(states)), 2):
        model.load_state_dict(uniform_soup([states[i], states[j]]))
        mid = accuracy(model, data)
        rows.append(
            {"i": i, "j": j, "acc_i": scores[i], "acc_j": scores[j], "midpoint": mid, "gain_over_mean": mid - (scores[i] + scores[j]) / 2}
        )
    return rows


def summarize_pairs(rows: list[dict]) -> dict:
    gains = np.array([r["gain_over_mean"] for r in rows])
    return {"pairs": len(rows), "frac_midpoint_ge_mean": float((gains >= 0).mean()), "mean_gain_pp": float(100 * gains.mean())}


# --- the measurement run (python -m finetune.world_probe) -----------------------------------------


def sweep_runs(n: int, epochs: int) -> list[ProbeRun]:
    """A grid over the knobs the paper's sweep varies: learning rate, label smoothing, augmentation."""
    grid = [(lr, ls, aug) for lr in (1e-4, 3e-4, 1e-3) for ls in (0.0, 0.1) for aug in (0, 2)]
    return [ProbeRun(probe_recipe(lr, ls, epochs), shift_px=aug, seed=i) for i, (lr, ls, aug) in enumerate(grid[:n])]


def evaluate_all(classifier: ImageClassifier, data: dict[str, WorldArrays]) -> dict[str, float]:
    scores = {name: accuracy(classifier, arrays) for name, arrays in data.items()}
    scores["avg_shifts"] = float(np.mean([scores[s] for s in SHIFTS]))
    return scores


_CONTEXT: dict = {}  # set before forking workers: data, template classifier, preprocessing


def _finetune_job(run: ProbeRun) -> tuple[dict, dict]:
    """Fine-tune one sweep member from the zero-shot classifier; return its report row and weights."""
    torch.set_num_threads(1)
    ctx = _CONTEXT
    model = copy.deepcopy(ctx["zeroshot"])
    result = probe_run(model, ctx["data"]["train"], run, ctx["preprocess"], heldout=ctx["data"]["heldout"], eval_every=ctx["eval_every"])
    scores = evaluate_all(model, ctx["evals"])
    config = {**dataclasses.asdict(run.recipe), "shift_px": run.shift_px, "seed": run.seed}
    return {"config": config, "seconds": result["seconds"], "curve": result["curve"], **scores}, model.state_dict()


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    from datasets.world import CLASSNAMES, TEMPLATES
    from datasets.world.sets import load_set
    from models.atomic import write_text_atomic
    from models.classifier import classifier_from_clip, zeroshot_head_weight
    from models.factory import create_clip

    parser = argparse.ArgumentParser(description="Measure the embedded world's fine-tuning targets (results/world/README.md).")
    parser.add_argument("--foundation", default="models/pretrained/tiny_clip_world.safetensors")
    parser.add_argument("--cache", default=".cache/world")
    parser.add_argument("--scale", default="demo", help="world scale (small: a quick check)")
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--curve", type=int, default=0, help="held-out accuracy every N steps")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tunes run in parallel, one thread each")
    parser.add_argument("--out", default="results/world/probe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ("train", "heldout", "photo", *SHIFTS)
    data = {name: load_set(args.cache, args.scale, 0, name) for name in names}
    evals = {k: v for k, v in data.items() if k != "train"}
    clip, preprocess, tokenizer = create_clip("TinyCLIP", pretrained=args.foundation)
    zeroshot = classifier_from_clip(clip, zeroshot_head_weight(clip, tokenizer, list(CLASSNAMES), list(TEMPLATES)))
    report: dict = {"zeroshot": evaluate_all(zeroshot, evals), "models": []}
    print("zeroshot", json.dumps(report["zeroshot"]), flush=True)
    _CONTEXT.update(zeroshot=zeroshot, data=data, evals=evals, preprocess=preprocess, eval_every=args.curve)
    states = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for row, state in pool.map(_finetune_job, sweep_runs(args.models, args.epochs)):
            report["models"].append(row)
            states.append(state)
            print(json.dumps(row), flush=True)
            write_text_atomic(args.out, json.dumps(report, indent=1))
    if len(states) > 1:
        rows = midpoint_table(states, zeroshot, data["photo"])
        report["midpoints"] = {"summary": summarize_pairs(rows), "pairs": rows}
        print(json.dumps(report["midpoints"]["summary"]), flush=True)
    write_text_atomic(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
