"""Training images/s of the fine-tuning loop against a bare PyTorch loop, same model and batches.

    python -m benchmarks.finetune_overhead [--archs TinyCLIP ViT-B-32] [--steps 6] [--rounds 3] [--threads N]

For each architecture (random weights, no download; ViT-B-32 at 224 px), both loops train the same
classifier on the same in-memory batches of random images:
- `ours`: `finetune.train.train_loop` (counter-based sampler, soft targets, schedule, isfinite check,
  grad clipping, tqdm off, metrics file, resumable-state machinery);
- `bare`: DataLoader -> forward -> cross-entropy -> backward -> clip -> AdamW step.
Runs alternate (bare, ours, bare, ours, ...) so drift in the machine's load hits both; a first round
warms up and is dropped. Each time covers one whole epoch, including each loop's own set-up. Prints the median images/s of each and ours / bare (goal ≥ 0.9).
Writes benchmarks/results/finetune_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from finetune.data import SeededExamples
from finetune.logbook import Logbook
from finetune.train import Ranks, Recipe, train_loop
from models.classifier import classifier_from_clip
from models.factory import create_clip

RESULTS = Path(__file__).parent / "results" / "finetune_overhead.json"
BATCH = {"TinyCLIP": 256, "ViT-B-32": 16}


class RandomImages(Dataset):
    def __init__(self, n: int, size: int, classes: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.labels = torch.randint(0, classes, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def fresh_classifier(arch: str):
    torch.manual_seed(0)
    clip_model, _, _ = create_clip(arch, pretrained=None)
    size = clip_model.visual.image_size
    return classifier_from_clip(clip_model, num_classes=10), int(size[0] if isinstance(size, (tuple, list)) else size)


def bare_loop(model: torch.nn.Module, data: Dataset, batch: int) -> float:
    """Seconds for one epoch of the minimal loop."""
    start = time.perf_counter()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    for images, labels in DataLoader(data, batch_size=batch, shuffle=True, drop_last=True):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def our_loop(model: torch.nn.Module, data: Dataset, batch: int) -> float:
    """Seconds for one epoch of `train_loop` with the same optimizer, lr, clipping and batches."""
    recipe = Recipe(lr=1e-5, epochs=1, batch_size=batch, warmup_steps=0, workers=0, save_every_minutes=0, progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        book = Logbook(Path(run_dir), {"name": "none"}, "bench", {})
        train_loop(
            model,
            model,
            SeededExamples(data, 0, random_transform=False),
            recipe,
            torch.device("cpu"),
            Ranks(),
            Path(run_dir),
            book,
        )
        return time.perf_counter() - start


def measure(arch: str, steps: int, rounds: int) -> dict:
    batch = BATCH.get(arch, 16)
    _, size = fresh_classifier(arch)
    data = RandomImages(batch * steps, size, 10)
    bare, ours = [], []
    for _ in range(rounds + 1):  # the first round warms up (allocator, kernels) and is dropped
        model, _ = fresh_classifier(arch)
        bare.append(len(data) // batch * batch / bare_loop(model, data, batch))
        model, _ = fresh_classifier(arch)
        ours.append(len(data) // batch * batch / our_loop(model, data, batch))
    bare, ours = bare[1:], ours[1:]
    row = {
        "arch": arch,
        "image_size": size,
        "batch": batch,
        "steps": steps,
        "rounds": rounds,
        "bare_images_per_s": statistics.median(bare),
        "ours_images_per_s": statistics.median(ours),
        "threads": torch.get_num_threads(),
    }
    row["ratio"] = row["ours_images_per_s"] / row["bare_images_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["TinyCLIP", "ViT-B-32"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs:
        row = measure(arch, args.steps, args.rounds)
        rows.append(row)
        print(
            f"{arch:10s} {row['image_size']}px batch {row['batch']:3d}: bare {row['bare_images_per_s']:8.1f} img/s, "
            f"ours {row['ours_images_per_s']:8.1f} img/s, ours/bare = {row['ratio']:.3f} (goal >= 0.9)",
            flush=True,
        )
    # keep the rows of architectures not measured this time
    kept = [r for r in json.loads(RESULTS.read_text()) if r["arch"] not in args.archs] if RESULTS.exists() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(kept + rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
