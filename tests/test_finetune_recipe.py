"""The recipe's math against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from finetune import recipe
from models.errors import UserError


def test_warmup_then_cosine_values_by_hand():
    # warmup 2 of 6 steps: (step + 1) / 2, then 0.5 * (1 + cos(pi * e / 4)) for e = 0..3
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    got = [recipe.warmup_cosine_lr(s, 1.0, 2, 6) for s in range(6)]
    assert got == pytest.approx(expected)
    assert recipe.warmup_cosine_lr(3, 2e-5, 2, 6) == pytest.approx(2e-5 * expected[3])


def test_warmup_longer_than_training_is_clamped():
    # 3 steps, warmup 500: the warmup becomes the whole run and reaches base lr at the last step
    assert [recipe.warmup_cosine_lr(s, 1.0, 500, 3) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_no_warmup_starts_at_base_lr():
    assert recipe.warmup_cosine_lr(0, 0.1, 0, 10) == pytest.approx(0.1)


def test_label_smoothing_targets_and_loss_match_torch():
    labels = torch.tensor([0, 2])
    targets = recipe.soft_targets(labels, 4, 0.2)
    assert targets[0].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])
    logits = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    assert recipe.soft_cross_entropy(logits, targets) == pytest.approx(
        float(F.cross_entropy(logits, labels, label_smoothing=0.2)), rel=1e-6
    )


def test_mixup_pairs_neighbours_and_mixes_targets_alike():
    images = torch.arange(3.0).view(3, 1).expand(3, 4).clone()  # rows 0, 1, 2
    targets = torch.eye(3)
    mixed, mixed_targets = recipe.mixup(images, targets, 0.4, torch.Generator().manual_seed(1))
    lam = float(mixed_targets[0, 0])
    assert 0 < lam < 1
    assert mixed[0].tolist() == pytest.approx([lam * 0 + (1 - lam) * 1] * 4)  # 0 with 1
    assert mixed[1].tolist() == pytest.approx([lam * 1 + (1 - lam) * 0] * 4)  # 1 with 0
    assert mixed_targets[0].tolist() == pytest.approx([lam, 1 - lam, 0])
    assert mixed[2].tolist() == pytest.approx([2.0] * 4)  # the odd last row is paired with itself


def test_mixup_of_a_batch_equals_mixup_of_its_even_slices():
    """Cut into ranks x micro-batches, with the same lam, the global batch is mixed exactly as in one piece."""
    x, t = torch.randn(8, 5), torch.eye(8)
    whole = recipe.mixup(x, t, 0.7, torch.Generator().manual_seed(3))
    pieces = [recipe.mixup(x[i : i + 2], t[i : i + 2], 0.7, torch.Generator().manual_seed(3)) for i in range(0, 8, 2)]
    assert torch.equal(whole[0], torch.cat([p[0] for p in pieces]))
    assert torch.equal(whole[1], torch.cat([p[1] for p in pieces]))


def test_mixup_is_reproducible_from_its_generator_and_off_at_zero():
    x, t = torch.randn(4, 3), torch.eye(4)
    a = recipe.mixup(x, t, 0.5, torch.Generator().manual_seed(7))
    b = recipe.mixup(x, t, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0])
    same = recipe.mixup(x, t, 0.0, torch.Generator().manual_seed(7))
    assert same[0] is x and same[1] is t


def test_mixup_lambda_follows_beta():
    # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); a = 0.5 gives 1/8
    g = torch.Generator().manual_seed(0)
    lams = torch.tensor([float(recipe.mixup(torch.zeros(2, 1), torch.eye(2), 0.5, g)[1][0, 0]) for _ in range(4000)])
    assert float(lams.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(lams.var()) == pytest.approx(1 / 8, abs=0.01)


@pytest.mark.parametrize(
    ("spec", "layers", "magnitude", "std"), [("rand-m9-n2", 2, 9, 0.0), ("rand-m1-n0", 0, 1, 0.0), ("rand-m9-n2-mstd0.5", 2, 9, 0.5)]
)
def test_randaug_strings_build_timms_policy_with_their_n_and_m(spec, layers, magnitude, std):
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    transform = recipe.timm_train_augmentation(spec, 32, (0.5, 0.5, 0.5))
    policy = transform.transforms[-1]  # crop, flip, then the policy (tests/test_finetune_transform.py: tensor for tensor)
    assert isinstance(policy, RandAugment) and policy.num_layers == layers
    assert {(op.magnitude, op.magnitude_std, op.prob) for op in policy.ops} == {(magnitude, std, 0.5)}  # timm's p 0.5
    assert len(policy.ops) == 15  # timm's default op list ('rand' without an increasing-magnitude variant)
    assert transform(Image.new("RGB", (50, 40), (120, 30, 200))).size == (32, 32)  # cropped to the model's resolution


@pytest.mark.parametrize("spec", ["rand-m9-x2", "randaug-m9-n2", "rand", "m9-n2", "rand-m-n2", "rand-m9-n2-"])
def test_bad_randaug_strings_are_user_errors(spec):
    with pytest.raises(UserError, match="finetune.randaug"):
        recipe.parse_randaug(spec)


@pytest.mark.parametrize("off", [None, "none", ""])
def test_randaug_off(off):
    assert recipe.timm_train_augmentation(off, 32, (0.5, 0.5, 0.5)) is None


BASE = dict(
    init="zeroshot",
    lr=1e-3,
    weight_decay=0.1,
    epochs=1,
    batch_size=8,
    grad_accum=1,
    warmup_steps=0,
    label_smoothing=0.0,
    mixup=0.0,
    randaug=None,
)


@pytest.mark.parametrize(
    "field,value", [("lr", 0.0), ("lr", -1e-3), ("epochs", -1), ("label_smoothing", 1.0), ("mixup", -0.1), ("init", "random")]
)
def test_hparams_that_cannot_train_are_refused(field, value):
    with pytest.raises(UserError, match=f"finetune.{field}"):
        recipe.check_hparams({**BASE, field: value})
    recipe.check_hparams(BASE)


def test_batch_must_split_into_micro_batches_across_ranks():
    recipe.check_hparams({**BASE, "grad_accum": 4}, world_size=2)  # 8 = 4 x 2: one example per micro-batch
    with pytest.raises(UserError, match="finetune.batch_size must be divisible by grad_accum x world size = 3 x 1"):
        recipe.check_hparams({**BASE, "grad_accum": 3})
    with pytest.raises(UserError, match="= 1 x 3, got 8"):
        recipe.check_hparams(BASE, world_size=3)


def test_frozen_batchnorm_keeps_pretrained_statistics_but_trains_its_affine_weights():
    import torch

    from finetune.recipe import freeze_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    model.train()
    freeze_batchnorm(model)
    images = torch.randn(8, 3, 5, 5) * 3 + 1
    model(images).sum().backward()
    after = model[1].state_dict()
    assert torch.equal(after["running_mean"], before["running_mean"])  # zeros: no update from the batch
    assert int(after["num_batches_tracked"]) == 0
    # the affine weight still learns, normalised by the running statistics (mean 0, variance 1), not the batch's:
    # d sum / d weight_c = sum over the batch of conv_c / sqrt(1 + eps)
    expected = model[0](images).detach().sum(dim=(0, 2, 3)) / (1 + model[1].eps) ** 0.5
    torch.testing.assert_close(model[1].weight.grad, expected)
    assert model[0].training


@pytest.mark.parametrize("magnitude", [1, 20])
def test_every_randaugment_op_applies_across_the_papers_magnitudes(magnitude):
    """The official sweep draws M in 1..20. timm's Posterize keeps int(M/10*4) bits, so 0 bits (a black
    image) for M < 3; Pillow 13 refuses 0 bits, so requirements pin Pillow 12: this fails if the pin is lost."""
    import numpy as np
    from PIL import Image

    transform = recipe.timm_train_augmentation(f"rand-m{magnitude}-n1", 32, (0.5, 0.5, 0.5)).transforms[-1]  # the policy
    image = Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8))
    for op in transform.ops:
        op.prob = 1.0
        op(image)  # must not raise
    (posterize,) = [op for op in transform.ops if op.name == "Posterize"]
    expected = 0 if magnitude == 1 else 192  # 200 keeping 0 bits, or 4 bits at M clipped to 10 (200 & 0xF0)
    assert np.asarray(posterize(image)).max() == expected
