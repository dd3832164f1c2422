"""The world probe fine-tunes with the stage's own loop: same recipe, same data, same weights bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import run_in_process
from omegaconf import OmegaConf

import datasets
from datasets.world import CLASSNAMES, TEMPLATES
from finetune import world_probe
from models.checkpoint import read_tensors
from models.classifier import classifier_from_clip, zeroshot_head_weight
from models.factory import create_clip

FOUNDATION = "models/pretrained/tiny_clip_world.safetensors"
STAGE = [
    "data.scale=small",
    "finetune.epochs=1",
    "finetune.batch_size=100",
    "finetune.warmup_steps=3",
    "finetune.lr=1e-3",
    "finetune.label_smoothing=0.1",
    "finetune.grad_clip=null",
    "finetune.threads=1",
    "finetune.heldout_eval=false",
    "finetune.progress=false",
    "seed=3",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("probe")
    data_cfg = OmegaConf.create({"name": "world", "root": str(base / "cache" / "world"), "scale": "small", "seed": 0})
    datasets.train_set(data_cfg, None)  # generates and caches every set
    env = {"MODEL_SOUPS_CACHE": str(base / "cache"), "MODEL_SOUPS_RUNS": str(base / "runs"), "OMP_NUM_THREADS": "1"}
    return {"env": env, "runs": base / "runs", "data_cfg": data_cfg}


def zeroshot_classifier():
    clip, preprocess, tokenizer = create_clip("TinyCLIP", pretrained=FOUNDATION)
    return classifier_from_clip(clip, zeroshot_head_weight(clip, tokenizer, list(CLASSNAMES), list(TEMPLATES))), preprocess


def test_probe_fine_tune_equals_the_finetune_stage_bit_for_bit(world):
    """The stage's run (its command, its own data loading) and the probe's fine-tune on the same recipe end
    on the same weights; the probe's held-out curve, taken between steps, does not disturb training."""
    result = run_in_process("finetune", "name=stage", *STAGE, env=world["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    stage = read_tensors(world["runs"] / "stage" / "finetune" / "finetune" / "model.safetensors")

    recipe = dataclasses.replace(world_probe.probe_recipe(lr=1e-3, label_smoothing=0.1, epochs=1), batch_size=100, warmup_steps=3)
    classifier, preprocess = zeroshot_classifier()
    train, heldout = datasets.world.arrays(world["data_cfg"], "train"), datasets.world.arrays(world["data_cfg"], "heldout")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = world_probe.probe_run(classifier, train, world_probe.ProbeRun(recipe, shift_px=0, seed=3), preprocess, heldout, eval_every=2)
    finally:
        torch.set_num_threads(threads)
    probe = classifier.state_dict()
    assert stage.keys() == probe.keys()
    differing = [k for k in stage if not torch.equal(stage[k], probe[k])]
    assert not differing, differing
    steps = len(train.labels) // 100
    assert [step for step, _ in run["curve"]] == list(range(2, steps + 1, 2))
    assert all(0.0 <= acc <= 1.0 for _, acc in run["curve"])


def test_shift_augmentation_translates_each_photo_by_at_most_the_shift(world):
    """Each augmented photo is the original moved by (dy, dx) in [-2, 2]^2 with edges replicated, drawn
    from (seed, epoch, example): the same example in the same epoch gets the same shift."""
    _, preprocess = zeroshot_classifier()
    train = datasets.world.arrays(world["data_cfg"], "train")
    data = world_probe.train_data(train, preprocess, shift_px=2, seed=0)
    padded = np.pad(train.images[:6], ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    size = train.images.shape[1]
    offsets = set()
    for index in range(6):
        image, label = data[(index, 0)]
        assert label == int(train.labels[index])
        assert torch.equal(image, data[(index, 0)][0])
        candidates = [
            (y, x)
            for y in range(5)
            for x in range(5)
            if torch.equal(image, preprocess_array(preprocess, padded[index, y : y + size, x : x + size]))
        ]
        assert candidates, index
        offsets.add(candidates[0])
    assert len(offsets) > 1  # not one fixed crop


def preprocess_array(preprocess, array: np.ndarray) -> torch.Tensor:
    from PIL import Image

    return preprocess(Image.fromarray(np.ascontiguousarray(array)))
