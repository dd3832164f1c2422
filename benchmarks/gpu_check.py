"""`python -m benchmarks.gpu_check` (`make gpucheck`): the GPU code paths against the CPU, on one GPU.

The development machines have no GPU, so the paths a cluster run takes (CUDA fp32, bf16 and fp16
autocast with the gradient scaler, DDP over NCCL, pinned-memory loading, AMP eval) are checked here,
each against the same computation on the CPU in fp32. It uses the project's own code:
`finetune.train.train_loop` (the fine-tuning step, its schedule, clipping and scaler) and
`models.evaluate.score_models` (eval's shared-decoding pass), on ViT-B-32-quickgelu with random
weights (no download) and random images at 224 px (`benchmarks.finetune_overhead.RandomImages`).

    python -m benchmarks.gpu_check [--steps 24] [--batch 16] [--arch ViT-B-32-quickgelu]

Each row compares, after `--steps` optimizer steps from the same initial weights and batches:
- `weights`: the relative L2 distance of the trained image tower + head to the CPU's (||a-b|| / ||b||)
  over the parameters that moved, i.e. the update's error against the update, and
- `logits`: the largest absolute difference of the trained model's logits on 256 held images, over the
  logits' own spread (max |a-b| / (max b - min b)), and the share of argmax predictions that agree.
The tolerances (`TOLERANCES`) are what each precision's rounding allows over a few dozen steps at a small
learning rate: fp32 differs from the CPU only by the order of floating-point sums (and TF32 convolutions
where cuDNN allows them); bf16 keeps 8 bits of mantissa, fp16 11. A row beyond its tolerance is FAIL
and the exit code is 1. Throughput (training and eval images/s) is printed for each. Without CUDA it
says so in one line and exits 0. `--device cpu` runs the same rows on the CPU against itself (a check
of this script: every difference is 0), e.g. with `--arch TinyCLIP --steps 2`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.finetune_overhead import RandomImages
from datasets import EvalSet
from finetune.data import SeededExamples
from finetune.train import Ranks, Recipe, train_loop
from models.classifier import classifier_from_clip
from models.evaluate import score_models
from models.factory import create_clip

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
CLASSES = 10
EVAL_IMAGES = 256
# (weights: relative L2 of the update's error, logits: max error over the logits' spread, agreement: least share of equal argmax)
TOLERANCES = {  # first settings, from each precision's rounding: revise with the first GPU figures (docs/benchmarks.md)
    "fp32": (2e-3, 2e-3, 0.99),
    "bf16": (1e-1, 5e-2, 0.90),
    "fp16": (3e-2, 2e-2, 0.95),
    "ddp_fp32": (2e-3, 2e-3, 0.99),
    "eval_fp32": (0.0, 1e-3, 0.99),  # eval of the CPU-trained weights on the device, against the CPU's logits
    "eval_amp": (0.0, 1e-2, 0.95),  # the same with fp16 autocast (eval.amp=auto on a GPU)
}


@dataclasses.dataclass
class Trained:
    state: dict[str, torch.Tensor]
    images_per_s: float


def fresh_classifier(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    clip_model, _, _ = create_clip(arch, pretrained=None)
    return classifier_from_clip(clip_model, num_classes=CLASSES)


def image_size(arch: str) -> int:
    clip_model, _, _ = create_clip(arch, pretrained=None)
    size = clip_model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def train(arch: str, data: RandomImages, batch: int, precision: str, device: torch.device, ddp: bool = False) -> Trained:
    """`--steps` optimizer steps of the project's training loop from the same initial weights and batches."""
    classifier = fresh_classifier(arch).to(device)
    model = classifier
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(classifier, device_ids=[device.index or 0] if device.type == "cuda" else None)
    recipe = Recipe(
        lr=1e-5, epochs=1, batch_size=batch, warmup_steps=2, workers=0, save_every_minutes=0, precision=precision, progress=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    steps = train_loop(model, classifier, SeededExamples(data, 0, random_transform=False), recipe, device, Ranks())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return Trained({k: v.detach().float().cpu() for k, v in classifier.state_dict().items()}, steps * batch / seconds)


def held_logits(
    state: dict[str, torch.Tensor], arch: str, images: RandomImages, device: torch.device, amp: bool
) -> tuple[torch.Tensor, float]:
    """The logits of `state` on the held images through eval's own pass (score_models), and images/s."""
    classifier = fresh_classifier(arch)
    classifier.load_state_dict(state)
    classifier.to(device).eval()
    eval_set = EvalSet("held", "id", images, [str(c) for c in range(CLASSES)])
    start = time.perf_counter()
    (scores,) = score_models(
        [classifier], eval_set, batch_size=64, workers=0, device=device, amp=amp, keep_logits=True, logits_dtype=torch.float32
    )
    return scores.logits, len(images) / (time.perf_counter() - start)


def update_error(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> float:
    """||state - reference|| / ||reference - initial|| over float tensors: the error relative to what training changed."""
    error = sum(float((state[k] - reference[k]).pow(2).sum()) for k in reference if reference[k].is_floating_point())
    moved = sum(float((reference[k] - initial[k]).pow(2).sum()) for k in reference if reference[k].is_floating_point())
    return (error / moved) ** 0.5 if moved > 0 else float(error > 0)


def logits_error(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |a-b| over the reference logits' spread, share of equal argmax predictions)."""
    spread = float(reference.max() - reference.min()) or 1.0
    agreement = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
    return float((logits - reference).abs().max()) / spread, agreement


def verdict(name: str, weights: float, logits: float, agreement: float) -> bool:
    max_weights, max_logits, min_agreement = TOLERANCES[name]
    return (name.startswith("eval") or weights <= max_weights) and logits <= max_logits and agreement >= min_agreement


def init_group(device: torch.device) -> bool:
    """A one-process group (NCCL on a GPU, gloo on the CPU); True if this call created it."""
    if dist.is_initialized():
        return False
    with socket.socket() as probe:  # a free port for the one-process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return True


def run(arch: str, steps: int, batch: int, device: torch.device) -> tuple[list[dict], bool]:
    size = image_size(arch)
    data = RandomImages(batch * steps, size, CLASSES)
    held = RandomImages(EVAL_IMAGES, size, CLASSES)
    held.images = held.images.flip(0)  # other images than the training ones (same generator)
    cpu = torch.device("cpu")
    initial = {k: v.float() for k, v in fresh_classifier(arch).state_dict().items()}
    reference = train(arch, data, batch, "fp32", cpu)
    reference_logits, cpu_eval_rate = held_logits(reference.state, arch, held, cpu, amp=False)
    rows = []

    def add(name: str, state: dict[str, torch.Tensor] | None, logits: torch.Tensor, train_rate: float | None, eval_rate: float) -> None:
        weights = update_error(state, reference.state, initial) if state is not None else 0.0
        max_error, agreement = logits_error(logits, reference_logits)
        ok = verdict(name, weights, max_error, agreement)
        rows.append(
            {"check": name, "weights_rel_error": weights, "logits_rel_error": max_error, "argmax_agreement": agreement,
             "train_images_per_s": train_rate, "eval_images_per_s": eval_rate, "tolerance": TOLERANCES[name], "ok": ok}
        )  # fmt: skip
        train_text = f"train {train_rate:8.1f} img/s" if train_rate is not None else " " * 20
        print(
            f"{name:9s} weights {weights:.2e}  logits {max_error:.2e}  argmax {agreement:6.1%}  {train_text}  "
            f"eval {eval_rate:8.1f} img/s  (tolerance {TOLERANCES[name]})  {'ok' if ok else 'FAIL'}",
            flush=True,
        )

    print(f"cpu fp32 reference: train {reference.images_per_s:.1f} img/s, eval {cpu_eval_rate:.1f} img/s", flush=True)
    for precision in ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32",):
        trained = train(arch, data, batch, precision, device)
        logits, rate = held_logits(trained.state, arch, held, device, amp=False)
        add(precision, trained.state, logits, trained.images_per_s, rate)
    created = init_group(device)
    trained = train(arch, data, batch, "fp32", device, ddp=True)
    if created:
        dist.destroy_process_group()
    logits, rate = held_logits(trained.state, arch, held, device, amp=False)
    add("ddp_fp32", trained.state, logits, trained.images_per_s, rate)
    for name, amp in (("eval_fp32", False), ("eval_amp", device.type == "cuda")):
        logits, rate = held_logits(reference.state, arch, held, device, amp=amp)
        add(name, None, logits, None, rate)
    return rows, all(row["ok"] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32-quickgelu")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per training run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to check this script against itself")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device here (torch.cuda.is_available() is False); run make gpucheck on a GPU machine")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        print(
            f"gpu_check on {name}: {args.arch}, {args.steps} steps of batch {args.batch}; TF32 matmul "
            f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}; CPU threads {torch.get_num_threads()}",
            flush=True,
        )
    rows, ok = run(args.arch, args.steps, args.batch, device)
    if device.type == "cuda":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps({"device": name, "arch": args.arch, "steps": args.steps, "batch": args.batch, "rows": rows}, indent=1) + "\n"
        )
    print(f"gpu_check: {'all checks within tolerance' if ok else 'FAILED: see the rows marked FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
