"""The fine-tuning recipe's math as pure functions: schedule, label smoothing, mixup, the training augmentation.

The warmup-cosine schedule lives in `models.schedule` (the world's CLIP pretraining steps by it too).

Nothing here touches files or global random state, so tests can check each piece by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from models.errors import UserError
from models.schedule import warmup_cosine_lr as warmup_cosine_lr  # the recipe's schedule

# timm's RandAugment grammar: "rand" followed by dash-separated settings, e.g. rand-m9-n2, rand-m9-n2-mstd0.5.
_RANDAUG_PART = re.compile(r"^(m|n|mstd|mmax|inc|w|p)(\d+(\.\d+)?)$")
OFF_VALUES = (None, "", "none", "None", "null")


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: (1 - s) on the true class plus s / K spread over all K."""
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): lam ~ Beta(alpha, alpha); mix examples 2k and 2k+1 with each other.

    Pairing neighbours (a fixed pairing, like timm's flipped batch, but local) keeps every pair inside any
    even-sized slice of the global batch, so the result does not depend on how the global batch is cut
    into ranks and accumulation steps when `generator` gives every slice the same lam. The batch order is
    already a random permutation. An odd last example is mixed with itself (unchanged). alpha = 0 turns
    mixup off.
    """
    if alpha <= 0:
        return images, targets
    # Beta(a, a) from two Gammas, drawn from our own generator so resume replays the same lam.
    g1 = torch._standard_gamma(torch.full((1,), float(alpha)), generator=generator)
    g2 = torch._standard_gamma(torch.full((1,), float(alpha)), generator=generator)
    lam = float(g1 / (g1 + g2))
    partner = torch.arange(images.shape[0], device=images.device) ^ 1
    partner = partner.clamp(max=images.shape[0] - 1)
    mixed_images = lam * images + (1.0 - lam) * images[partner]
    mixed_targets = lam * targets + (1.0 - lam) * targets[partner]
    return mixed_images, mixed_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against probability targets (smoothed and/or mixed): the mean (or the sum) over examples."""
    per_example = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1)
    return per_example.sum() if reduction == "sum" else per_example.mean()


def parse_randaug(spec: str | None) -> str | None:
    """Validate a timm RandAugment string like 'rand-m9-n2'; None/'none' means off.

    Raises UserError naming the field for anything timm would misread or silently ignore.
    """
    if spec in OFF_VALUES:
        return None
    text = str(spec)
    parts = text.split("-")
    if parts[0] != "rand" or len(parts) < 2 or not all(_RANDAUG_PART.match(p) for p in parts[1:]):
        raise UserError(
            f"finetune.randaug: cannot parse {text!r}; expected a timm RandAugment string like 'rand-m9-n2' (M magnitude, N ops) or null"
        )
    return text


CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # timm's (and torchvision's) ImageNet random-resized crop
HFLIP = 0.5


def timm_train_augmentation(
    spec: str | None,
    image_size: int | tuple[int, int],
    mean: tuple[float, ...],
    hflip: float = HFLIP,
    crop_scale: tuple[float, float] = CROP_SCALE,
) -> Callable | None:
    """The PIL part of timm's ImageNet training pipeline (`timm.data.transforms_factory.transforms_imagenet_train`),
    as the official `finetune.py --timm-aug` builds it, or None when `spec` is off.

    A random-resized crop to the model's resolution (area 8-100%, aspect 3/4-4/3, bicubic), a horizontal
    flip (p 0.5), then RandAugment `spec` on the crop (translations of 45% of the resolution, fill with the
    model's mean). `hflip` and `crop_scale` are timm's unless the data config says otherwise (the embedded
    world: conf/data/world.yaml). 'rand-mM-n0' is the crop and the flip alone. timm's colour jitter is off, as timm turns
    it off whenever RandAugment is on. The conversion to a tensor and the model's mean/std follow (the
    model's eval preprocessing, whose resize and centre crop leave an image of its resolution as it is).
    """
    spec = parse_randaug(spec)
    if spec is None:
        return None
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
    from torchvision import transforms

    size = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
    hparams = {
        "translate_const": int(size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
        "interpolation": str_to_pil_interp("bicubic"),
    }
    try:
        policy = rand_augment_transform(spec, hparams)
    except (AssertionError, ValueError, KeyError) as err:
        raise UserError(f"finetune.randaug: timm rejects {spec!r} ({err})") from None
    crop = RandomResizedCropAndInterpolation(image_size, scale=tuple(crop_scale), ratio=CROP_RATIO, interpolation="bicubic")
    flip = [transforms.RandomHorizontalFlip(p=hflip)] if hflip > 0 else []  # as timm: no flip step at p = 0
    return transforms.Compose([crop, *flip, policy])


def check_hparams(ft: Mapping[str, Any], world_size: int = 1) -> None:
    """Refuse settings that cannot train, before any work is done (any model is built)."""
    micro_batches = int(ft["grad_accum"]) * world_size
    checks = [
        (float(ft["lr"]) > 0, "finetune.lr must be > 0", ft["lr"]),
        (float(ft["weight_decay"]) >= 0, "finetune.weight_decay must be >= 0", ft["weight_decay"]),
        (int(ft["epochs"]) >= 0, "finetune.epochs must be >= 0 (0 saves the init itself)", ft["epochs"]),
        (int(ft["batch_size"]) >= 1, "finetune.batch_size must be >= 1", ft["batch_size"]),
        (int(ft["grad_accum"]) >= 1, "finetune.grad_accum must be >= 1", ft["grad_accum"]),
        (
            int(ft["batch_size"]) % max(micro_batches, 1) == 0,
            f"finetune.batch_size must be divisible by grad_accum x world size = {ft['grad_accum']} x {world_size}",
            ft["batch_size"],
        ),
        (int(ft["warmup_steps"]) >= 0, "finetune.warmup_steps must be >= 0", ft["warmup_steps"]),
        (0 <= float(ft["label_smoothing"]) < 1, "finetune.label_smoothing must be in [0, 1)", ft["label_smoothing"]),
        (float(ft["mixup"]) >= 0, "finetune.mixup (alpha) must be >= 0", ft["mixup"]),
        (ft["init"] in ("zeroshot", "lp"), "finetune.init must be zeroshot or lp", ft["init"]),
    ]
    for ok, message, value in checks:
        if not ok:
            raise UserError(f"{message}, got {value!r}")
    parse_randaug(ft["randaug"])


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Keep BatchNorm layers in eval mode: their running statistics stay the pretrained ones.

    Every fine-tune then shares the foundation's statistics (and `num_batches_tracked`), so weights can be
    averaged; the affine parameters still train. ViTs have no BatchNorm, so this changes nothing for them.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
