"""The training loop in-process on a toy classifier: preemption hands over to submitit after saving."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
from conftest import HANG_S
from torch import nn
from torch.utils.data import Dataset

from finetune import state
from finetune.data import SeededExamples
from finetune.logbook import Logbook, read_metrics
from finetune.preemption import PreemptionGuard
from finetune.train import Ranks, Recipe, train_loop
from models.classifier import ImageClassifier

HP = Recipe(
    init="zeroshot",
    lr=0.05,
    weight_decay=0.01,
    epochs=2,
    batch_size=8,
    grad_accum=2,
    warmup_steps=2,
    grad_clip=1.0,
    label_smoothing=0.1,
    mixup=0.3,
    randaug=None,
    precision="auto",
    compile=False,
    workers=0,
    save_every_steps=0,
    save_every_minutes=0,
)


class Blobs(Dataset):
    """40 random 'images' of 3 classes; optionally raises the preemption signal when item `signal_at` is read."""

    def __init__(self, signal_at: int | None = None):
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.arange(40) % 3
        self.images = torch.randn(40, 6, generator=generator) + self.labels[:, None].float()
        self.signal_at = signal_at

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int):
        if index == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR2)
            self.signal_at = None
        return self.images[index], int(self.labels[index])


def toy_classifier() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)), 4, 3)


def train(tmp_path, data: Dataset) -> ImageClassifier:
    classifier = toy_classifier()
    train_loop(
        classifier,
        classifier,
        SeededExamples(data, 0),
        dataclasses.replace(HP, progress=False),
        torch.device("cpu"),
        Ranks(),
        tmp_path,
        Logbook(tmp_path, {"name": "none"}, "toy", {}),
    )
    return classifier


@pytest.fixture
def fake_submitit_handler():
    """Stands in for submitit's USR2 handler (checkpoint + requeue + exit) and records the call."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, handler)
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_preemption_saves_at_the_step_end_requeues_and_resumes_identically(tmp_path, fake_submitit_handler):
    uninterrupted = train(tmp_path / "a", Blobs())

    # Example order is a permutation; find the step in which example 7 is read.
    with pytest.raises(SystemExit):
        train(tmp_path / "b", Blobs(signal_at=7))
    assert fake_submitit_handler == [signal.SIGUSR2]
    saved = torch.load(tmp_path / "b" / state.STATE_FILE, weights_only=True)
    assert 1 <= saved["step"] <= 10  # the step that read example 7 was completed before saving
    assert signal.getsignal(signal.SIGUSR2) != PreemptionGuard._note  # the guard gave the signal back

    resumed = train(tmp_path / "b", Blobs())
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    losses = [[m["loss"] for m in read_metrics(p / "metrics.jsonl")] for p in (tmp_path / "a", tmp_path / "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_without_submitit_the_signal_is_not_intercepted(tmp_path):
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        guard = PreemptionGuard().install()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL and guard.previous is None
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_training_reduces_the_loss_on_separable_blobs(tmp_path):
    train(tmp_path, Blobs())
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert metrics[1]["loss"] < metrics[0]["loss"]
    assert [m["step"] for m in metrics] == [5, 10]


WANDB_SCRIPT = """
import sys
from pathlib import Path
from finetune.logbook import Logbook
book = Logbook(Path(sys.argv[1]), {"name": "wandb", "project": "soups-test", "entity": None, "mode": None}, "toy", {"lr": 0.1})
book.log_epoch({"epoch": 0, "step": 3, "loss": 1.25, "images_per_s": 10.0})
book.log_summary({"heldout_top1": 0.5})
book.close()
"""


def test_wandb_logger_works_offline_inside_the_run_folder(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "WANDB_MODE": "offline", "HOME": str(tmp_path / "home"), "WANDB_API_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-c", WANDB_SCRIPT, str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, env=env, timeout=HANG_S
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (log_file,) = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"heldout_top1" in log_file.read_bytes() and b"loss" in log_file.read_bytes()
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == [{"epoch": 0, "step": 3, "loss": 1.25, "images_per_s": 10.0}]
