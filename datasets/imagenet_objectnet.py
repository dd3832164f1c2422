"""ObjectNet 1.0: its 113 ImageNet-overlapping classes and the projection of 1000-way logits onto them.

The mapping files ship in the ObjectNet download's `mappings/` folder:
- `folder_to_objectnet_label.json`: image folder -> ObjectNet class name;
- `objectnet_to_imagenet_1k.json`: ObjectNet class name -> "imagenet name; imagenet name; ...";
- `imagenet_to_label_2012_v2`: line i is the name of ImageNet-2012 class id i;
- `pytorch_to_imagenet_2012_id.json`: pytorch (sorted-wnid) index -> ImageNet-2012 class id.

Classes are the mapped folders in sorted order; a class's logit is the max over its mapped ImageNet
logits, as in the model-soups/WiSE-FT evaluation. Images are cropped by their 2-px border first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from datasets.imagenet_folders import layout_error

MAPPING_FILES = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "imagenet_to_label_2012_v2",
    "pytorch_to_imagenet_2012_id.json",
)
BORDER_PX = 2
EXPECTED = "<objectnet root>/images/<folder>/*.png and <objectnet root>/mappings/{" + ",".join(MAPPING_FILES) + "}"


@dataclasses.dataclass
class ObjectNetClasses:
    folders: list[str]  # sorted mapped image folders; label i is folders[i]
    classnames: list[str]  # ObjectNet class names, lower case, in label order
    imagenet_ids: list[list[int]]  # per class, the ImageNet (pytorch) indices it maps to


def read_mappings(mappings_dir: Path, set_name: str = "ObjectNet") -> ObjectNetClasses:
    for name in MAPPING_FILES:
        if not (mappings_dir / name).is_file():
            raise layout_error(set_name, EXPECTED, f"missing mapping file {mappings_dir / name}")
    try:
        folder_to_label = json.loads((mappings_dir / MAPPING_FILES[0]).read_text())
        objectnet_to_imagenet = json.loads((mappings_dir / MAPPING_FILES[1]).read_text())
        pytorch_to_2012 = json.loads((mappings_dir / MAPPING_FILES[3]).read_text())
    except json.JSONDecodeError as err:
        raise layout_error(set_name, EXPECTED, f"a mapping file in {mappings_dir} is not valid JSON ({err})") from None
    names_2012 = (mappings_dir / MAPPING_FILES[2]).read_text().splitlines()
    id_2012_to_pytorch = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    name_to_pytorch = {}
    for line_number, name in enumerate(names_2012):
        if name.strip() and line_number in id_2012_to_pytorch:
            name_to_pytorch[name.strip()] = id_2012_to_pytorch[line_number]
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}
    mapped = {}
    for objectnet_name, imagenet_names in objectnet_to_imagenet.items():
        if objectnet_name not in label_to_folder:
            raise layout_error(set_name, EXPECTED, f"class {objectnet_name!r} of {MAPPING_FILES[1]} has no folder in {MAPPING_FILES[0]}")
        ids = []
        for name in imagenet_names.split("; "):
            if name not in name_to_pytorch:
                raise layout_error(set_name, EXPECTED, f"ImageNet class {name!r} of {MAPPING_FILES[1]} is not in {MAPPING_FILES[2]}")
            ids.append(name_to_pytorch[name])
        mapped[label_to_folder[objectnet_name]] = (objectnet_name.lower(), ids)
    folders = sorted(mapped)
    return ObjectNetClasses(folders, [mapped[f][0] for f in folders], [mapped[f][1] for f in folders])


def max_over_mapped(logits: torch.Tensor, imagenet_ids: list[list[int]]) -> torch.Tensor:
    """[N, 1000] -> [N, classes]: each class's logit is the max over the ImageNet logits mapped to it."""
    return torch.stack([logits[:, ids].max(dim=1).values for ids in imagenet_ids], dim=1)


class MaxOverMapped:
    """Picklable projection (DataLoader workers and torch.distributed may pickle the EvalSet)."""

    def __init__(self, imagenet_ids: list[list[int]]):
        self.imagenet_ids = imagenet_ids

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return max_over_mapped(logits, self.imagenet_ids)
