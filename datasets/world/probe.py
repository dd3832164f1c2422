"""A minimal fine-tuning probe, to measure the world's targets without the finetune stage.

Fine-tunes the image tower plus a zero-shot-initialised head on the photo train split (AdamW, warmup +
cosine, cross-entropy), then scores fine-tunes, and the weight midpoints of pairs, on the world's sets.
This is a measuring instrument for issue 3's targets, not the project's fine-tuning stage (finetune/).
"""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import multiprocessing
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datasets.world import normalised_batch
from datasets.world.pretrain import lr_at, random_shift
from datasets.world.sets import WorldArrays
from models.classifier import ImageClassifier


@dataclass
class ProbeConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1
    steps: int = 300
    batch_size: int = 128
    warmup_steps: int = 30
    label_smoothing: float = 0.0
    shift_px: int = 0
    seed: int = 0
    eval_every: int = 0  # held-out accuracy every N steps (0 = only at the end)


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Keep BatchNorm running statistics fixed (eval mode) while the rest trains."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def accuracy(classifier: ImageClassifier, data: WorldArrays, mean, std, batch_size: int = 1000) -> float:
    classifier.eval()
    correct = 0
    for i in range(0, len(data.labels), batch_size):
        logits = classifier(normalised_batch(data.images[i : i + batch_size], mean, std))
        correct += int((logits.argmax(-1).numpy() == data.labels[i : i + batch_size]).sum())
    return correct / len(data.labels)


def finetune(classifier: ImageClassifier, train: WorldArrays, cfg: ProbeConfig, mean, std, heldout: WorldArrays | None = None) -> dict:
    """Fine-tune `classifier` in place; return the held-out curve and the time taken."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    params = list(classifier.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    curve = []
    start = time.time()
    for step in range(cfg.steps):
        classifier.train()
        freeze_batchnorm(classifier)
        index = torch.randint(0, len(train.labels), (cfg.batch_size,), generator=generator).numpy()
        images = random_shift(normalised_batch(train.images[index], mean, std), cfg.shift_px, generator)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(classifier(images), torch.from_numpy(train.labels[index]), label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if heldout is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            curve.append((step + 1, accuracy(classifier, heldout, mean, std)))
    classifier.eval()
    return {"curve": curve, "seconds": time.time() - start}


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for float tensors; integer buffers (BatchNorm counters) come from a."""
    return {k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a}


def midpoint_table(states: list[dict], template: ImageClassifier, data: WorldArrays, mean, std) -> list[dict]:
    """For every pair: both endpoints' accuracy and the midpoint's (the shared-basin check)."""
    model = copy.deepcopy(template)
    scores = []
    for state in states:
        model.load_state_dict(state)
        scores.append(accuracy(model, data, mean, std))
    rows = []
    for i, j in itertools.combinations(range(len(states)), 2):
        model.load_state_dict(interpolate(states[i], states[j]))
        mid = accuracy(model, data, mean, std)
        rows.append(
            {"i": i, "j": j, "acc_i": scores[i], "acc_j": scores[j], "midpoint": mid, "gain_over_mean": mid - (scores[i] + scores[j]) / 2}
        )
    return rows


def summarize_pairs(rows: list[dict]) -> dict:
    gains = np.array([r["gain_over_mean"] for r in rows])
    return {"pairs": len(rows), "frac_midpoint_ge_mean": float((gains >= 0).mean()), "mean_gain_pp": float(100 * gains.mean())}


# --- the measurement run (python -m datasets.world.probe) -----------------------------------------

SHIFTS = ("photo_v2", "rendition", "sketch", "unusual", "hard")


def sweep_configs(n: int, steps: int) -> list[ProbeConfig]:
    """A grid over the knobs the paper's sweep varies: learning rate, label smoothing, augmentation."""
    grid = [(lr, ls, aug) for lr in (1e-4, 3e-4, 1e-3) for ls in (0.0, 0.1) for aug in (0, 2)]
    return [ProbeConfig(lr=lr, label_smoothing=ls, shift_px=aug, steps=steps, seed=i) for i, (lr, ls, aug) in enumerate(grid[:n])]


def evaluate_all(classifier: ImageClassifier, data: dict[str, WorldArrays], mean, std) -> dict[str, float]:
    scores = {name: accuracy(classifier, arrays, mean, std) for name, arrays in data.items()}
    scores["avg_shifts"] = float(np.mean([scores[s] for s in SHIFTS]))
    return scores


_CONTEXT: dict = {}  # set before forking workers: data, template classifier, normalisation


def _finetune_job(cfg: ProbeConfig) -> tuple[dict, dict]:
    """Fine-tune one sweep member from the zero-shot classifier; return its report row and weights."""
    torch.set_num_threads(1)
    ctx = _CONTEXT
    model = copy.deepcopy(ctx["zeroshot"])
    run = finetune(model, ctx["data"]["train"], cfg, ctx["mean"], ctx["std"], heldout=ctx["data"]["heldout"])
    scores = evaluate_all(model, ctx["evals"], ctx["mean"], ctx["std"])
    return {"config": dict(cfg.__dict__), "seconds": run["seconds"], "curve": run["curve"], **scores}, model.state_dict()


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    from datasets.world import CLASSNAMES, TEMPLATES
    from datasets.world.sets import load_set
    from models.atomic import write_text_atomic
    from models.classifier import classifier_from_clip, zeroshot_head_weight
    from models.factory import create_clip

    parser = argparse.ArgumentParser(description="Measure issue 3's fine-tuning targets on the embedded world.")
    parser.add_argument("--foundation", default="models/pretrained/tiny_clip_world.safetensors")
    parser.add_argument("--cache", default=".cache/world")
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--curve", type=int, default=0, help="held-out accuracy every N steps")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tunes run in parallel, one thread each")
    parser.add_argument("--out", default="results/world/probe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ("train", "heldout", "photo", *SHIFTS)
    data = {name: load_set(args.cache, "demo", 0, name) for name in names}
    evals = {k: v for k, v in data.items() if k != "train"}
    clip, _, tokenizer = create_clip("TinyCLIP", pretrained=args.foundation)
    mean, std = clip.visual.preprocess_cfg["mean"], clip.visual.preprocess_cfg["std"]
    zeroshot = classifier_from_clip(clip, zeroshot_head_weight(clip, tokenizer, list(CLASSNAMES), list(TEMPLATES)))
    report: dict = {"zeroshot": evaluate_all(zeroshot, evals, mean, std), "models": []}
    print("zeroshot", json.dumps(report["zeroshot"]), flush=True)
    _CONTEXT.update(zeroshot=zeroshot, data=data, evals=evals, mean=mean, std=std)
    configs = sweep_configs(args.models, args.steps)
    for cfg in configs:
        cfg.eval_every = args.curve
    states = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for row, state in pool.map(_finetune_job, configs):
            report["models"].append(row)
            states.append(state)
            print(json.dumps(row), flush=True)
            write_text_atomic(args.out, json.dumps(report, indent=1))
    if len(states) > 1:
        rows = midpoint_table(states, zeroshot, data["photo"], mean, std)
        report["midpoints"] = {"summary": summarize_pairs(rows), "pairs": rows}
        print(json.dumps(report["midpoints"]["summary"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
