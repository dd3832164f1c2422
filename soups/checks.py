"""Ingredient checks before any averaging: one architecture, one class list, one key set, shapes, dtypes.

The one check of both the stage (checkpoint files with metadata) and the library (soups.library: state
dicts, compared by their tensors alone), so both refuse a mismatch with the same line.
Pure functions over descriptions of the ingredients (no tensors are read); NaN/inf are caught while
streaming (soups.streaming) and unequal non-float tensors while averaging (soups.average).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from models.errors import UserError
from soups.streaming import TensorSpec


@dataclasses.dataclass
class IngredientSpec:
    name: str  # the path, for error messages
    arch: str
    num_classes: int
    classes: str
    tensors: dict[str, TensorSpec]
    activation: str | None = None
    pretrained: str | None = None  # the foundation it was fine-tuned from (soups across tasks need one)


def tensors_only(name: str, tensors: dict[str, TensorSpec]) -> IngredientSpec:
    """An ingredient known by its tensors alone (a state dict handed to the library): `check_compatible`
    then compares its keys, shapes and dtypes, the checks that need no metadata."""
    return IngredientSpec(name, arch="", num_classes=0, classes="", tensors=tensors)


def check_fits_architecture(spec: IngredientSpec, expected: dict[str, TensorSpec]) -> None:
    """The ingredient's keys and shapes are those of the classifier its architecture builds (`expected`).

    Ingredients can agree with each other and still not fit the model (all lack the same key, or
    official files of another ViT size under `model.arch`); the soup would then be unloadable."""
    missing = sorted(expected.keys() - spec.tensors.keys())
    extra = sorted(spec.tensors.keys() - expected.keys())
    if missing or extra:
        key, what = (missing[0], "lacks") if missing else (extra[0], "has an unexpected")
        count = len(missing) + len(extra)
        raise UserError(
            f"{spec.name}: {what} key '{key}' ({count} key(s) differ) for architecture {spec.arch!r}; check model.arch or the checkpoint"
        )
    for key, (shape, _) in expected.items():
        if tuple(spec.tensors[key][0]) != tuple(shape):
            raise UserError(
                f"{spec.name}: key '{key}' has shape {list(spec.tensors[key][0])}, architecture {spec.arch!r} "
                f"with {spec.num_classes} classes has {list(shape)}; check model.arch or the checkpoint"
            )


def check_across_tasks(specs: Sequence[IngredientSpec]) -> None:
    """Ingredients fine-tuned on different tasks: one foundation, and image towers (every key but `head.*`)
    that `check_compatible` accepts; their heads may differ, since they are never averaged."""
    from models.heads import is_head_key

    if specs and specs[0].pretrained is not None:
        for other in specs[1:]:
            if other.pretrained != specs[0].pretrained:
                raise UserError(
                    f"{other.name}: fine-tuned from foundation {other.pretrained!r}, {specs[0].name} from {specs[0].pretrained!r}; "
                    "a soup across tasks averages image towers fine-tuned from one foundation"
                )
    towers = [
        dataclasses.replace(spec, num_classes=0, classes="", tensors={k: v for k, v in spec.tensors.items() if not is_head_key(k)})
        for spec in specs
    ]
    check_compatible(towers)


def check_compatible(specs: Sequence[IngredientSpec]) -> None:
    """Raise a UserError naming the first ingredient and key that differ from the first ingredient."""
    if not specs:
        raise UserError("ingredients: the ingredient set is empty; give a glob, a list of checkpoints or a finished sweep folder")
    first = specs[0]
    for other in specs[1:]:
        for field, what, need in (
            ("arch", "architecture", "one architecture"),
            ("activation", "activation", "one architecture"),
            ("num_classes", "mismatched class counts: class count", "one class list"),
            ("classes", "class list", "one class list"),
        ):
            mine, theirs = getattr(other, field), getattr(first, field)
            if mine != theirs:
                across = " (models fine-tuned on different tasks: soup.across_tasks=true)" if field in ("num_classes", "classes") else ""
                raise UserError(f"{other.name}: {what} {mine!r} differs from {first.name} ({theirs!r}); soups need {need}{across}")
        missing = sorted(first.tensors.keys() - other.tensors.keys())
        extra = sorted(other.tensors.keys() - first.tensors.keys())
        if missing or extra:
            key, what = (missing[0], "lacks") if missing else (extra[0], "has an extra")
            raise UserError(f"{other.name}: {what} key '{key}' compared with {first.name}; ingredients must share one key set")
        for key, (shape, dtype) in first.tensors.items():
            other_shape, other_dtype = other.tensors[key]
            if other_shape != shape:
                raise UserError(f"{other.name}: key '{key}' has shape {list(other_shape)}, {first.name} has {list(shape)}")
            if other_dtype != dtype:
                raise UserError(f"{other.name}: key '{key}' has dtype {other_dtype}, {first.name} has {dtype}")
