"""Miniature ImageNet-suite trees in the exact public layouts, with tiny random images.

For tests and benchmarks (and for trying `data=imagenet` on a laptop): every folder a real download has,
a few pixels per image. The returned manifest holds the label each file was written for, so tests can
check the loaders against labels known independently of them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.imagenet import DEFAULT_DIRS, NUM_CLASSES, imagenet_wnids, official_subset_wnids


@dataclasses.dataclass
class Miniature:
    root: Path
    labels: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # set name -> {path: label}
    objectnet_imagenet_ids: list[list[int]] = dataclasses.field(default_factory=list)  # per ObjectNet class


def _write_image(path: Path, rng: np.random.Generator, size: int) -> None:
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    suffix = path.suffix.lower()
    Image.fromarray(pixels).save(path, format="PNG" if suffix == ".png" else "JPEG", quality=90)


def _class_tree(root: Path, folders: Sequence[str], labels: Sequence[int], per_class: int, name: str, rng, size: int) -> dict[str, int]:
    written = {}
    for folder, label in zip(folders, labels):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            path = root / folder / name.format(folder=folder, k=k)
            _write_image(path, rng, size)
            written[str(path)] = label
    return written


def make_miniature(
    root: str | Path,
    sets: Sequence[str] = ("train", "val", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA", "ObjectNet"),
    per_class: int = 1,
    train_per_class: int = 3,
    r_wnids: Sequence[str] | None = None,
    a_wnids: Sequence[str] | None = None,
    objectnet_classes: int = 5,
    objectnet_extra_folders: int = 2,
    size: int = 8,
    seed: int = 0,
    val_indices: Sequence[int] | None = None,
    heldout_per_class: int = 1,
) -> Miniature:
    """Write the requested sets under `root` in the layout of docs/data.md (the `DEFAULT_DIRS` names).

    R and A get their official 200 wnids each (or the lists passed). `val_indices` (1-based, at least one per
    class) gives val the official file names `ILSVRC2012_val_%08d.JPEG` of those images, dealt round the 1000
    wnid folders in order (ReaL and multilabel find labels by these names); without it val names are not
    official. ObjectNet gets `objectnet_classes` mapped folders plus
    unmapped ones (the real set has 313 folders, 113 mapped), and mapping files in its `mappings/` format.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = imagenet_wnids()
    out = Miniature(root)
    for set_name in sets:
        base = root / DEFAULT_DIRS[set_name]
        if set_name == "train":
            out.labels[set_name] = _class_tree(base, wnids, range(NUM_CLASSES), train_per_class, "{folder}_{k}.JPEG", rng, size)
            write_split_file(root / SPLIT_FILE, out.labels[set_name], heldout_per_class, rng)
        elif set_name == "val" and val_indices is not None:
            out.labels[set_name] = _official_val(base, list(val_indices), rng, size)
        elif set_name == "val":
            out.labels[set_name] = _class_tree(
                base, wnids, range(NUM_CLASSES), per_class, "ILSVRC2012_val_{folder}_{k:04d}.JPEG", rng, size
            )
        elif set_name == "ImageNetSketch":
            out.labels[set_name] = _class_tree(base, wnids, range(NUM_CLASSES), per_class, "sketch_{k}.JPEG", rng, size)
        elif set_name == "ImageNetV2":
            out.labels[set_name] = _class_tree(
                base, [str(i) for i in range(NUM_CLASSES)], range(NUM_CLASSES), per_class, "{k:040x}.jpeg", rng, size
            )
        elif set_name in ("ImageNetR", "ImageNetA"):
            chosen = list((r_wnids if set_name == "ImageNetR" else a_wnids) or official_subset_wnids(set_name))
            chosen = sorted(chosen)
            # labels index the folders present, in sorted order
            out.labels[set_name] = _class_tree(base, chosen, range(len(chosen)), per_class, "art_{k}.jpg", rng, size)
        elif set_name == "ObjectNet":
            out.labels[set_name], out.objectnet_imagenet_ids = _objectnet(
                base, per_class, objectnet_classes, objectnet_extra_folders, rng, size
            )
        else:
            raise ValueError(f"unknown set {set_name!r}")
    return out


SPLIT_FILE = "imagenet_98_idxs.npy"  # a held-out split file in the official format, for this miniature's train set


def write_split_file(path: Path, train_labels: dict[str, int], per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Mark `per_class` train images of each class held out, as the official imagenet_98_idxs.npy does:
    one 0/1 entry per image, in torchvision ImageFolder order (sorted class folders, sorted files)."""
    order = sorted(train_labels, key=lambda p: (Path(p).parent.name, Path(p).name))
    labels = np.array([train_labels[p] for p in order])
    mask = np.zeros(len(order), dtype=np.int64)
    for label in np.unique(labels):
        mask[rng.choice(np.flatnonzero(labels == label), size=per_class, replace=False)] = 1
    np.save(path, mask)
    return mask


def _official_val(base: Path, indices: list[int], rng, size: int) -> dict[str, int]:
    """Val image `indices[k]` in wnid folder `k % 1000`, under its official name."""
    if len(indices) < NUM_CLASSES or len(set(indices)) != len(indices):
        raise ValueError(f"val_indices: need at least {NUM_CLASSES} distinct indices (one per class folder)")
    written = {}
    wnids = imagenet_wnids()
    for k, index in enumerate(indices):
        folder = base / wnids[k % NUM_CLASSES]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"ILSVRC2012_val_{index:08d}.JPEG"
        _write_image(path, rng, size)
        written[str(path)] = k % NUM_CLASSES
    return written


def _objectnet(base: Path, per_class: int, n_classes: int, n_extra: int, rng, size: int) -> tuple[dict[str, int], list[list[int]]]:
    """ObjectNet images (with a 2-px border, as the real photos have) and its four mapping files.

    ImageNet-2012 ids are a random permutation of pytorch indices and names are arbitrary, so a loader
    that skipped a mapping step would get the classes wrong.
    """
    wnids = imagenet_wnids()
    id_2012_of_pytorch = rng.permutation(NUM_CLASSES)
    names_2012 = [f"imagenet class {i} ({wnids[int(np.flatnonzero(id_2012_of_pytorch == i)[0])]})" for i in range(NUM_CLASSES)]
    folders = [f"folder_{i:03d}" for i in range(n_classes + n_extra)]
    mapped_folders = folders[:n_classes]
    objectnet_names = {f: f"Object {i}" for i, f in enumerate(folders)}
    imagenet_ids = [sorted(rng.choice(NUM_CLASSES, size=1 + i % 3, replace=False).tolist()) for i in range(n_classes)]
    mappings = base / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(objectnet_names))
    objectnet_to_imagenet = {
        objectnet_names[f]: "; ".join(names_2012[id_2012_of_pytorch[i]] for i in ids) for f, ids in zip(mapped_folders, imagenet_ids)
    }
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(objectnet_to_imagenet))
    (mappings / "imagenet_to_label_2012_v2").write_text("\n".join(names_2012) + "\n")
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(p): int(i) for p, i in enumerate(id_2012_of_pytorch)}))
    labels = _class_tree(base / "images", mapped_folders, range(n_classes), per_class, "{k:032x}.png", rng, size + 4)
    _class_tree(base / "images", folders[n_classes:], [-1] * n_extra, per_class, "{k:032x}.png", rng, size + 4)
    return labels, imagenet_ids


# A tiny open_clip ViT with open_clip's own BPE tokenizer (so clip_benchmark can run it unchanged):
# random weights, 32-px input. For interop tests and eval benchmarks on miniature trees.
TINY_VIT_ARCH = "ViT-Tiny-BPE"  # models/model_configs/ViT-Tiny-BPE.json: ViT-B-32's structure, tiny, BPE tokenizer


def register_tiny_vit() -> str:
    """Register the project's model configs with open_clip in this process; return the tiny ViT's name."""
    from models.factory import register_model_configs

    register_model_configs()
    return TINY_VIT_ARCH


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m datasets.imagenet_miniature ROOT`: write a miniature ImageNet suite (for dry runs)."""
    import argparse
    import shutil

    parser = argparse.ArgumentParser(prog="python -m datasets.imagenet_miniature", description=main.__doc__)
    parser.add_argument("root", type=Path, help="folder to create (skipped if it already holds a finished miniature)")
    parser.add_argument("--per-class", type=int, default=1, help="images per class in each test set")
    parser.add_argument("--train-per-class", type=int, default=3, help="images per class in train")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args(argv)
    marker = args.root / "MINIATURE_DONE"
    if marker.exists():
        print(f"{args.root}: miniature already written")
        return 0
    staging = args.root.with_name(args.root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    official_val = range(1, NUM_CLASSES * args.per_class + 1)  # official val names, as a download has (ReaL needs them)
    make_miniature(staging, per_class=args.per_class, train_per_class=args.train_per_class, size=args.size, val_indices=official_val)
    (staging / marker.name).write_text("")
    shutil.rmtree(args.root, ignore_errors=True)
    staging.rename(args.root)  # whole tree or nothing
    print(f"{args.root}: wrote a miniature ImageNet suite")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
