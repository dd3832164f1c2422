"""Helpers shared by the eval, ImageNet-loader and interop tests (no tests here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import HANG_S
from omegaconf import OmegaConf

from models.checkpoint import CheckpointMeta, save_checkpoint
from models.classifier import classifier_from_clip
from models.factory import create_clip
from models.schemas import EvalOptions

TINY_ARCH = "TinyCLIP"  # the project's tiny CLIP (models/model_configs), so subprocesses can build it too


@pytest.fixture
def one_thread():
    """CI shares two cores among processes; one intra-op thread is faster here than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def imagenet_cfg(root: Path, **extra) -> OmegaConf:
    fields = {
        "name": "imagenet",
        "root": str(root),
        "classes": "imagenet1k",
        "heldout": "ImageNet2p",
        "id": "ImageNet",
        "shifts": ["ImageNetV2", "ImageNetR", "ImageNetSketch", "ObjectNet", "ImageNetA"],
        "heldout_split": "seeded",
        "heldout_per_class": 1,
        "heldout_seed": 0,
    }
    return OmegaConf.create({**fields, **extra})


def eval_cfg(**extra) -> OmegaConf:
    """`eval.*` as the stages read it: the typed defaults (models.schemas.EvalOptions), fp32, 64 a batch, no workers."""
    return OmegaConf.structured(EvalOptions(**{"amp": False, "batch_size": 64, "workers": 0, **extra}))


def random_checkpoints(
    folder: Path, count: int, num_classes: int = 1000, classes: str = "imagenet1k", seed: int = 0, done: bool = True
) -> list[Path]:
    """`count` TinyCLIP classifiers with random towers and heads, as finished runs `<folder>/run{i}/`."""
    torch.manual_seed(seed)
    paths = []
    for i in range(count):
        clip_model, _, _ = create_clip(TINY_ARCH)
        classifier = classifier_from_clip(clip_model, head_weight=torch.randn(num_classes, clip_model.visual.output_dim))
        path = save_checkpoint(
            folder / f"run{i}" / "model.safetensors",
            classifier.state_dict(),
            CheckpointMeta(TINY_ARCH, None, num_classes, classes, "individual"),
        )
        if done:
            (path.parent / "DONE").write_text("")
        paths.append(path)
    return paths


def run_in_processes(target, arg_lists: list[tuple], timeout: float = HANG_S) -> None:
    """Run `target(*args)` for each args in forked processes at once; each must exit 0."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=target, args=args) for args in arg_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=timeout)
        assert process.exitcode == 0
