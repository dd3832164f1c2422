"""The training transform is timm's ImageNet training pipeline, as the official `finetune.py --timm-aug`
builds it (`transforms_imagenet_train(img_size, mean, std)` with RandAugment): timm's own transform is the
oracle, tensor for tensor, under the same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_train

from finetune.data import SeededExamples, seeded_randomness
from finetune.train import train_transform
from models.errors import UserError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def images(count: int, height: int, width: int) -> list[Image.Image]:
    """Generated images with structure (gradients plus noise), so every crop, flip and op shows."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    out = []
    for _ in range(count):
        base = np.stack([xs * rng.uniform(1, 4), ys * rng.uniform(1, 4), (xs + ys) * rng.uniform(0.5, 2)], axis=-1)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)))
    return out


def timm_oracle(spec: str, size: int, hflip: float = 0.5, scale: tuple[float, float] | None = None) -> object:
    return transforms_imagenet_train(
        img_size=size, scale=scale, hflip=hflip, auto_augment=spec, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD
    )


@pytest.mark.parametrize("spec", ["rand-m9-n2", "rand-m1-n0", "rand-m20-n1", "rand-m7-n2-mstd0.5"])
@pytest.mark.parametrize("size,height,width", [(32, 32, 32), (24, 45, 60)])  # the world's photos; a larger, non-square photo
def test_the_training_transform_equals_timms_for_the_same_seed(spec, size, height, width):
    preprocess = image_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    ours, oracle = train_transform(preprocess, spec, size), timm_oracle(spec, size)
    for seed, image in enumerate(images(12, height, width)):
        with seeded_randomness(seed):
            mine = ours(image)
        with seeded_randomness(seed):
            theirs = oracle(image)
        assert mine.shape == (3, size, size) and torch.equal(mine, theirs), (spec, seed)


def test_without_augmentation_it_is_the_eval_preprocessing():
    preprocess = image_transform(32, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    assert train_transform(preprocess, None, 32) is preprocess


def test_the_worlds_batched_reads_equal_timms_per_example():
    """The embedded world converts a batch at once (WorldDataset.__getitems__): with timm's pipeline each
    example still equals timm's transform under that example's seed."""
    import datasets.world as world
    from datasets.world.sets import WorldArrays
    from finetune.data import counter_seed

    pictures = images(6, 32, 32)
    arrays = WorldArrays(np.stack([np.asarray(p) for p in pictures]), np.arange(6), [""] * 6)
    preprocess = image_transform(32, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    data = SeededExamples(world.WorldDataset(arrays, train_transform(preprocess, "rand-m9-n2", 32)), seed=11)
    keys = [(3, 0), (0, 0), (5, 1), (3, 1)]
    oracle = timm_oracle("rand-m9-n2", 32)
    for (tensor, label), (index, epoch) in zip(data.__getitems__(keys), keys):
        with seeded_randomness(counter_seed(11, epoch, index)):
            assert torch.equal(tensor, oracle(pictures[index])) and label == index


@pytest.mark.parametrize("hflip,scale", [(0.0, (0.08, 1.0)), (0.0, (0.5, 1.0)), (0.3, (0.25, 0.9))])
def test_the_data_configs_flip_and_crop_area_are_timms_arguments(hflip, scale):
    """The embedded world trains without a flip (conf/data/world.yaml); any flip and crop area give timm's transform."""
    preprocess = image_transform(32, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    ours, oracle = train_transform(preprocess, "rand-m9-n1", 32, hflip, scale), timm_oracle("rand-m9-n1", 32, hflip, scale)
    for seed, image in enumerate(images(8, 32, 32)):
        with seeded_randomness(seed):
            mine = ours(image)
        with seeded_randomness(seed):
            assert torch.equal(mine, oracle(image)), seed


def test_the_worlds_config_turns_the_flip_off_and_keeps_timms_crop():
    from omegaconf import OmegaConf

    from finetune.train import train_geometry
    from models.cli import CONF_DIR

    world = OmegaConf.load(CONF_DIR / "data" / "world.yaml")
    assert train_geometry(world) == (0.0, (0.08, 1.0))
    assert train_geometry(OmegaConf.load(CONF_DIR / "data" / "imagenet.yaml")) == (0.5, (0.08, 1.0))  # timm's
    with pytest.raises(UserError, match="data.train_hflip"):
        train_geometry(OmegaConf.create({"train_hflip": 2}))
    with pytest.raises(UserError, match="data.train_crop_scale"):
        train_geometry(OmegaConf.create({"train_crop_scale": [0.9, 0.5]}))
