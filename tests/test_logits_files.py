"""Saved logits files are a function of their contents: the same logits give the same bytes."""

from __future__ import annotations

import hashlib
import json

import torch

from models.checkpoint import read_safetensors_header
from models.logits import load_logits, save_logits


def test_the_same_logits_are_the_same_file_every_time(tmp_path):
    logits, labels = torch.arange(12, dtype=torch.float32).view(4, 3), torch.tensor([2, 0, 1, 2])
    digests = set()
    for attempt in range(8):  # safetensors orders a metadata map at random per map: 8 saves expose two keys' order
        path = save_logits(tmp_path / f"run{attempt}", "model_3", "ImageNetV2", logits, labels)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    _, metadata, _ = read_safetensors_header(path)
    assert json.loads(metadata["logits_of"]) == {"dataset": "ImageNetV2", "model_id": "model_3"}
    read_logits, read_labels = load_logits(path)
    assert torch.equal(read_logits, logits) and torch.equal(read_labels, labels)
