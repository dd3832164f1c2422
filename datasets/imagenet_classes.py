"""The ImageNet-1k class lists: the 1000 wnids in the standard order and the official 200-class subsets of
ImageNet-R and ImageNet-A (timm ships the lists). Read by the ImageNet loaders and by the relabellings."""

from __future__ import annotations

import functools
import pkgutil

NUM_CLASSES = 1000


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in the standard (sorted) class order; timm ships the list."""
    from timm.data import ImageNetInfo

    wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
    assert len(wnids) == NUM_CLASSES and list(wnids) == sorted(wnids)
    return wnids


@functools.cache
def official_subset_wnids(set_name: str) -> frozenset[str]:
    """The official 200 wnids of ImageNet-R or ImageNet-A (Hendrycks et al.), from the lists timm ships."""
    name = {"ImageNetR": "imagenet_r_synsets.txt", "ImageNetA": "imagenet_a_synsets.txt"}[set_name]
    wnids = frozenset(pkgutil.get_data("timm.data", f"_info/{name}").decode().split())
    assert len(wnids) == 200 and wnids <= set(imagenet_wnids())
    return wnids
