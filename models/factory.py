"""The one front door for building CLIP models: `create_clip(arch, pretrained)`.

Architectures are data: the project's own model configs are JSON files in `models/model_configs/`,
registered with `open_clip.add_model_config`, so the tiny CLIP is built exactly like ViT-B-32.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch

from models.errors import UserError
from models.world_tokenizer import CHARACTER_WORDS, WorldTokenizer

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

# Tokenizers for project-defined architectures that do not use open_clip's BPE tokenizer.
# Keyed by architecture name; values build the tokenizer.
PROJECT_TOKENIZERS: dict[str, Callable[[], Callable]] = {}
PROJECT_TOKENIZERS["TinyCLIP"] = WorldTokenizer  # the embedded world's word-level tokenizer
PROJECT_TOKENIZERS["TinyCLIP-Chars"] = functools.partial(WorldTokenizer, words=CHARACTER_WORDS)  # the character world's


@functools.cache
def register_model_configs() -> tuple[str, ...]:
    """Register every JSON in models/model_configs with open_clip; return their names."""
    names = []
    for config in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(config)
        names.append(config.stem)
    return tuple(names)


def check_arch(arch: str) -> None:
    register_model_configs()
    available = open_clip.list_models()
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise UserError(f"model.arch: unknown architecture {arch!r}{hint}")


ACTIVATIONS = ("quick_gelu", "gelu")


def arch_uses_quick_gelu(arch: str) -> bool:
    """Whether open_clip's config of `arch` itself builds QuickGELU (the `-quickgelu` architectures)."""
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def wants_quick_gelu(arch: str, pretrained: str | None) -> bool:
    """Whether weights `pretrained` for `arch` need QuickGELU.

    OpenAI's CLIP weights were trained with QuickGELU, and open_clip's pretrained config says so
    (`get_pretrained_cfg(arch, tag)["quick_gelu"]`), but open_clip >= 3 no longer switches to it for
    `ViT-B-32` + `openai`: it builds GELU and only warns (open_clip issue #771). A weights file has no
    tag, so its activation comes from the architecture name (`ViT-B-32-quickgelu`).
    """
    if arch_uses_quick_gelu(arch):
        return True
    if pretrained and not looks_like_path(str(pretrained)):
        return bool(open_clip.get_pretrained_cfg(arch, str(pretrained)).get("quick_gelu", False))
    return False


def activation_of(model: torch.nn.Module) -> str | None:
    """The activation of the image tower's MLPs: 'quick_gelu', 'gelu', or None (a tower with neither)."""
    for module in model.modules():
        if isinstance(module, open_clip.transformer.QuickGELU):
            return "quick_gelu"
        if isinstance(module, torch.nn.GELU):
            return "gelu"
    return None


def create_clip(arch: str, pretrained: str | None = None, device: str | torch.device = "cpu", activation: str | None = None):
    """Build an open_clip CLIP model, its eval transform and its tokenizer.

    `pretrained` is an open_clip tag ('openai'), a local checkpoint path, or None (random init).
    `activation` ('quick_gelu' or 'gelu', as a checkpoint records it) rebuilds a model exactly as it was
    built; None picks the activation the weights need (`wants_quick_gelu`).
    Downloads that fail (no network) raise a UserError that says how to proceed offline.
    """
    check_arch(arch)
    if activation is not None and activation not in ACTIVATIONS:
        raise UserError(f"activation {activation!r} unknown; expected one of {ACTIVATIONS}")
    quick_gelu = wants_quick_gelu(arch, pretrained) if activation is None else activation == "quick_gelu"
    if not quick_gelu and arch_uses_quick_gelu(arch):
        raise UserError(f"model.arch={arch} builds QuickGELU but the checkpoint was built with GELU; use the arch without -quickgelu")
    if pretrained and not Path(str(pretrained)).exists() and looks_like_path(str(pretrained)):
        raise UserError(f"model.pretrained: file not found: {pretrained}")
    try:
        with _quiet_open_clip(expect_random_init=not pretrained):
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained or None, device=device, force_quick_gelu=quick_gelu and not arch_uses_quick_gelu(arch)
            )
    except RuntimeError as err:
        message = str(err).splitlines()[0] if str(err) else repr(err)
        if "download" in message.lower():  # open_clip 3.x wraps hub failures: "Failed to download weights for tag ..."
            raise UserError(
                f"model.pretrained={pretrained!r}: download of weights for {arch} failed; "
                "with no network, download them elsewhere and pass model.pretrained=/path/to/weights"
            ) from None
        if "pretrained" in message.lower() or "unknown" in message.lower():
            raise UserError(f"model.pretrained: {message}") from None
        raise
    except OSError as err:  # network failures during a hub or URL download surface as OSError subclasses
        raise UserError(
            f"model.pretrained={pretrained!r}: download of weights for {arch} failed ({type(err).__name__}); "
            "with no network, download them elsewhere and pass model.pretrained=/path/to/weights"
        ) from None
    model.eval()
    return model, preprocess, get_tokenizer(arch)


class _OpenClipChatter(logging.Filter):
    """Drops open_clip's per-call INFO lines (it logs on the root logger) and, when the caller loads its own
    weights next, the 'initialized randomly' warning that would otherwise mislead."""

    def __init__(self, expect_random_init: bool):
        super().__init__()
        self.expect_random_init = expect_random_init
        self.package = str(Path(open_clip.__file__).parent)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.package):
            return True
        if record.levelno <= logging.INFO:
            return False
        return not (self.expect_random_init and "No pretrained weights loaded" in record.getMessage())


@contextlib.contextmanager
def _quiet_open_clip(expect_random_init: bool):
    chatter = _OpenClipChatter(expect_random_init)
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


def get_tokenizer(arch: str):
    if arch in PROJECT_TOKENIZERS:
        return PROJECT_TOKENIZERS[arch]()
    return open_clip.get_tokenizer(arch)


def looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".bin", ".safetensors", ".pth"))
