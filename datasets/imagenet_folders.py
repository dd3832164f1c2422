"""Image files on disk as a torch Dataset, and the layout checks for the ImageNet suite's folder trees.

Sample order is torchvision `ImageFolder`'s (sorted class folders, sorted `os.walk`, sorted file names):
the official held-out index `imagenet_98_idxs.npy` indexes ImageNet train in exactly that order, and
clip_benchmark reads the same folders with `ImageFolder`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from datasets import UnreadableImage
from models.errors import UserError

Sample = tuple[str, int]


class ImageFiles(Dataset):
    """`(transform(image), label)` for a list of `(path, label)`; an unreadable file gives `UnreadableImage`.

    `crop_border` px are cut from every side before the transform (ObjectNet's 2-px border).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None, crop_border: int = 0):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.crop_border = crop_border

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # PIL's UnidentifiedImageError is an OSError
            return UnreadableImage(path, f"{type(err).__name__}: {err}"), label
        if self.crop_border:
            image = crop_border(image, self.crop_border)
        return (self.transform(image) if self.transform else image), label


def load_rgb(path: str) -> Image.Image:
    """Decode like torchvision's `pil_loader` (the loader of ImageFolder and hence of clip_benchmark), with
    high-bit-depth grey images scaled to 8 bits first (`to_8_bits`)."""
    with open(path, "rb") as handle:
        image = Image.open(handle)
        return to_8_bits(image).convert("RGB")


def to_8_bits(image: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits as 8-bit grey, keeping the high byte(s), as Pillow itself reads 48-bit
    RGB and 64-bit RGBA PNGs. Pillow's `convert("RGB")` clips such pixels at 255 instead: a 16-bit PNG
    would turn white. Floating-point pixels have no fixed range: refused (ValueError), not guessed."""
    if image.mode.startswith("I;16"):  # 16-bit grey PNG or TIFF
        bits = 16
    elif image.mode == "I":  # 32-bit integer grey; a TIFF says how many of those bits it uses
        bits = int((getattr(image, "tag_v2", None) or {}).get(258, (32,))[0])
    elif image.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no fixed range; save the image with 8 or 16 bits per channel")
    else:
        return image
    pixels = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(pixels, 0, 2**bits - 1) >> (bits - 8)).astype(np.uint8), "L")


def crop_border(image: Image.Image, pixels: int) -> Image.Image:
    width, height = image.size
    return image.crop((pixels, pixels, width - pixels, height - pixels))


def layout_error(set_name: str, expected: str, problem: str) -> UserError:
    return UserError(f"{set_name}: expected {expected} (see docs/data.md); {problem}")


def require_dir(path: Path, set_name: str, expected: str) -> None:
    """The folder exists and can be listed; the problem named is the real one (missing, not a folder, permission)."""
    if not path.exists():
        raise layout_error(set_name, expected, f"missing folder {path}")
    if not path.is_dir():
        raise layout_error(set_name, expected, f"{path} is a file, not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise layout_error(set_name, expected, f"cannot read folder {path} (permission denied)")


def is_folder(entry: os.DirEntry) -> bool:
    """Whether a listed entry is a folder (a link to one counts); a link that cannot be followed (a
    symlink loop, a permission) is a UserError naming it, not a traceback."""
    try:
        return entry.is_dir()
    except OSError as err:
        raise UserError(f"data.root: {entry.path}: {err.strerror or err}; remove or fix this link or folder") from None


def subfolders(path: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(path) if is_folder(entry))


def folder_samples(root: Path, folder_to_label: dict[str, int], set_name: str, expected: str) -> list[Sample]:
    """Every image under `root/<folder>/` for the given folders, in ImageFolder order; each folder must hold one."""
    for folder in sorted(folder_to_label):
        require_dir(root / folder, set_name, expected)
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset  # here: torchvision loads torch._dynamo (~1.5 s)

    samples = make_dataset(str(root), folder_to_label, extensions=IMG_EXTENSIONS, allow_empty=True)
    present = {label for _, label in samples}
    for folder, label in sorted(folder_to_label.items()):
        if label not in present:
            raise layout_error(set_name, expected, f"no images in {root / folder}")
    return samples


def check_known_folders(root: Path, folders: Iterable[str], known: set[str], set_name: str, expected: str) -> None:
    for folder in folders:
        if folder not in known:
            raise layout_error(set_name, expected, f"unexpected folder {root / folder}")
