"""The world's foundation model: pretrain the tiny CLIP (one command), and its zero-shot table.

- `build_foundation(cfg)`: generate the world, pretrain `model.arch` on the corpus, and write the
  open_clip state dict as safetensors (loadable with `open_clip.create_model(arch, pretrained=path)`),
  plus `results/world/pretrain.json` (config, loss curve, the first steps' exact losses, seconds).
- `zero_shot_table(cfg)`: the zero-shot classifier's top-1 on every world set, written as results
  records (`zeroshot.jsonl`) and a markdown table; skipped when the recorded checkpoint is unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

import datasets
from datasets.world import arrays, train_fingerprint, world_key, world_params
from datasets.world.pretrain import pretrain
from datasets.world.samples import write_sample_grid
from datasets.world.sets import build_world, load_set
from models.atomic import atomic_path, write_text_atomic
from models.checkpoint import sha256_prefix
from models.classifier import classifier_from_clip, zeroshot_head_weight
from models.cli import report_outcome
from models.errors import UserError
from models.evaluate import accuracies
from models.factory import create_clip, get_tokenizer
from models.results import make_record
from models.schemas import PretrainConfig

log = logging.getLogger(__name__)

FIRST_STEPS = 5  # losses recorded exactly, to test that the command reproduces its first steps


def pretrain_config(cfg: Any) -> PretrainConfig:
    """`cfg.pretrain` as its typed class (conf/world.yaml starts from it, so every field is there)."""
    return PretrainConfig(**OmegaConf.to_container(cfg.pretrain, resolve=True))


def init_model(arch: str, seed: int):
    """A freshly initialised CLIP: the init depends only on `seed`."""
    torch.manual_seed(seed)
    model, _, tokenizer = create_clip(arch, pretrained=None)
    return model, tokenizer


def run_pretraining(cfg: Any):
    """Build the world, then pretrain a freshly initialised `model.arch` on its corpus."""
    torch.set_num_threads(int(cfg.pretrain.threads))
    root_dir, scale, seed, version = world_params(cfg.data)
    root = build_world(root_dir, scale, seed, version=version)
    corpus = load_set(root_dir, scale, seed, "corpus", version)
    model, tokenizer = init_model(cfg.model.arch, cfg.pretrain.seed)
    pcfg = pretrain_config(cfg)

    def report(step: int, loss: float) -> None:
        if step % 100 == 0 or step == pcfg.steps - 1:
            log.info("pretrain step %d/%d loss %.4f", step, pcfg.steps, loss)

    return model, pretrain(model, corpus, tokenizer, pcfg, on_step=report), root


class _Stop(Exception):
    """Raised from the step callback to end a run after its first steps."""


def first_losses(model: torch.nn.Module, cfg: Any, steps: int = FIRST_STEPS) -> list[float]:
    """The losses of the first `steps` steps of the pretraining command (same data, init, schedule)."""
    losses: list[float] = []
    torch.set_num_threads(int(cfg.pretrain.threads))
    corpus = arrays(cfg.data, "corpus")
    pcfg = pretrain_config(cfg)

    def collect(step: int, loss: float) -> None:
        losses.append(loss)
        if len(losses) >= steps:
            raise _Stop

    try:
        pretrain(model, corpus, get_tokenizer(cfg.model.arch), pcfg, on_step=collect)
    except _Stop:
        pass
    return losses


def save_dtype(dtype: str) -> torch.dtype:
    """The foundation's `pretrain.save_dtype`, checked (before pretraining, not after it)."""
    if dtype not in ("float32", "float16"):
        raise UserError(f"pretrain.save_dtype: {dtype!r} is not float32 or float16")
    return getattr(torch, dtype)


def foundation_state(model: torch.nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    """The weights to write: float tensors cast to `dtype` (float32 | float16), the rest as they are."""
    cast = save_dtype(dtype)
    return {k: (v.to(cast) if v.is_floating_point() else v).detach().contiguous() for k, v in model.state_dict().items()}


def build_foundation(cfg: Any) -> Path:
    """Pretrain the tiny CLIP and write it to `cfg.foundation` (and its log to `cfg.results_dir`)."""
    start = time.time()
    pcfg = pretrain_config(cfg)
    save_dtype(str(cfg.pretrain.save_dtype))
    model, run_log, _ = run_pretraining(cfg)
    out = Path(cfg.foundation)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = foundation_state(model, str(cfg.pretrain.save_dtype))
    meta = {"arch": cfg.model.arch, "world": world_key(cfg.data), "steps": str(run_log.steps_done)}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    record = {
        "command": "python -m datasets.world task=pretrain",
        "arch": cfg.model.arch,
        "params": sum(p.numel() for p in model.parameters()),
        "pretrain": dict(cfg.pretrain),
        "world": {"scale": cfg.data.scale, "seed": cfg.data.seed, "version": world_params(cfg.data)[3]},
        "seconds": round(time.time() - start, 1),
        "train_seconds": round(run_log.seconds, 1),
        "threads": torch.get_num_threads(),
        "first_losses": run_log.losses[:FIRST_STEPS],
        "loss_every_50": run_log.losses[::50],
        "final_loss": run_log.losses[-1],
        "checkpoint_sha256": sha256_prefix(out),
    }
    write_text_atomic(Path(cfg.results_dir) / "pretrain.json", json.dumps(record, indent=1, default=str))
    if pcfg.checkpoint:
        Path(pcfg.checkpoint).unlink(missing_ok=True)
    log.info("foundation written to %s in %.0f s", out, record["seconds"])
    return out


def zero_shot_table(cfg: Any) -> dict[str, float]:
    """Zero-shot top-1 of the foundation on every world set; cached by checkpoint hash and world."""
    foundation = Path(cfg.model.pretrained) if cfg.model.pretrained else None
    if foundation is None or not foundation.exists():
        raise UserError(
            f"model.pretrained: foundation checkpoint not found ({foundation}); build it with `python -m datasets.world task=pretrain`"
        )
    results_dir = Path(cfg.results_dir)
    checkpoint = {"path": str(foundation), "sha256": sha256_prefix(foundation)}
    key = world_key(cfg.data)
    sizes = train_fingerprint(cfg.data)  # a release of the world with other set sizes has other images
    summary_path = results_dir / f"zeroshot_{key}.json"
    grid = results_dir / "samples.png"
    cached = json.loads(summary_path.read_text()) if summary_path.exists() and not cfg.force else {}
    fresh = cached.get("checkpoint_sha256") == checkpoint["sha256"] and cached.get("sizes") == sizes
    root, scale, seed, version = world_params(cfg.data)
    if not grid.exists() or cfg.force or (not fresh and scale == "demo"):  # the README shows the demo scale's images
        write_sample_grid(grid, root, scale, seed, version)
    if fresh:
        log.info("zero-shot table cached in %s", summary_path)
        report_outcome("skip", summary_path)
        return cached["top1"]
    torch.set_num_threads(int(cfg.pretrain.threads))
    model, preprocess, tokenizer = create_clip(cfg.model.arch, pretrained=str(foundation))
    info = datasets.class_info(cfg.data)
    classifier = classifier_from_clip(model, zeroshot_head_weight(model, tokenizer, info.classnames, info.templates))
    records, top1 = [], {}
    for eval_set in datasets.eval_sets(cfg.data, preprocess):
        [(correct, n)] = accuracies([classifier], eval_set, batch_size=cfg.data.batch_size)
        top1[eval_set.name] = correct / n
        records.append(
            make_record(
                model_id="zeroshot", kind="zeroshot", dataset=eval_set.name, role=eval_set.role, correct=correct, n=n, checkpoint=checkpoint
            )
        )
    shifts = [top1[s] for s in cfg.data.shifts]
    summary = {
        "world": key,
        "sizes": sizes,
        "checkpoint_sha256": checkpoint["sha256"],
        "top1": top1,
        "avg_shifts": sum(shifts) / len(shifts),
    }
    write_text_atomic(results_dir / f"zeroshot_{key}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    write_text_atomic(results_dir / f"zeroshot_{key}.md", markdown_table(top1, cfg.data))
    write_text_atomic(summary_path, json.dumps(summary, indent=1))
    return top1


def markdown_table(top1: dict[str, float], data_cfg: Any) -> str:
    names = [data_cfg.heldout, data_cfg.id, *data_cfg.shifts]
    shifts = [top1[s] for s in data_cfg.shifts]
    header = "| model | " + " | ".join(names) + " | avg shifts |\n|---|" + "---|" * (len(names) + 1) + "\n"
    row = "| zero-shot | " + " | ".join(f"{100 * top1[n]:.1f}" for n in names) + f" | {100 * sum(shifts) / len(shifts):.1f} |\n"
    return header + row
