"""The ImageNet-suite loaders on miniature trees in the public layouts, against the labels the trees were written with."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets.imagenet import DEFAULT_DIRS, SelectColumns, imagenet_wnids
from datasets.imagenet_miniature import make_miniature
from datasets.imagenet_objectnet import max_over_mapped
from datasets.imagenet_split import heldout_mask
from models.errors import UserError
from tests.test_eval_helpers import imagenet_cfg

SETS = ("train", "val", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA", "ObjectNet")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_miniature(
        tmp_path_factory.mktemp("imagenet"), sets=SETS, per_class=1, train_per_class=3, objectnet_classes=6, objectnet_extra_folders=3
    )


def samples_of(eval_set) -> dict[str, int]:
    return {path: label for path, label in eval_set.dataset.samples}


def test_every_set_has_the_written_labels(mini):
    cfg = imagenet_cfg(mini.root)
    sets = {s.name: s for s in datasets.eval_sets(cfg, None)}
    assert [(s.name, s.role) for s in sets.values()] == datasets.set_names(cfg)
    for name, key in [
        ("ImageNet", "val"),
        ("ImageNetV2", "ImageNetV2"),
        ("ImageNetSketch", "ImageNetSketch"),
        ("ImageNetR", "ImageNetR"),
        ("ImageNetA", "ImageNetA"),
    ]:
        assert samples_of(sets[name]) == mini.labels[key], name
    # ObjectNet: only the mapped folders, in sorted order; the unmapped ones are left out
    written = {p: label for p, label in mini.labels["ObjectNet"].items() if label >= 0}
    assert samples_of(sets["ObjectNet"]) == written and len(written) == 6
    # the class lists: 1000 names; R/A the names of the folders present
    names = datasets.class_info(cfg).classnames
    wnids = imagenet_wnids()
    assert sets["ImageNetR"].classnames == [names[i] for i in range(0, 1000, 5)]
    assert sets["ImageNetA"].classnames == [names[i] for i in range(0, 1000, 7)]
    assert sets["ImageNet"].classnames == names and wnids[0] == "n01440764" and wnids[-1] == "n15075141"


def test_images_decode_and_objectnet_border_is_cropped(mini):
    sets = {s.name: s for s in datasets.eval_sets(imagenet_cfg(mini.root), None, ["ImageNet", "ObjectNet"])}
    image, label = sets["ImageNet"].dataset[0]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 0
    path, _ = sets["ObjectNet"].dataset.samples[0]
    cropped, _ = sets["ObjectNet"].dataset[0]
    original = np.asarray(Image.open(path).convert("RGB"))
    assert original.shape[:2] == (12, 12) and cropped.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(cropped), original[2:-2, 2:-2])


def test_projections_by_hand(mini):
    logits = torch.arange(2 * 1000, dtype=torch.float32).reshape(2, 1000) % 997  # distinct, not monotone
    assert SelectColumns([3, 10, 999])(logits).tolist() == [[3.0, 10.0, 2.0], [6.0, 13.0, 5.0]]
    constructed = torch.zeros(1, 1000)
    constructed[0, [5, 7, 9]] = torch.tensor([1.0, 4.0, 2.0])
    assert max_over_mapped(constructed, [[5, 9], [7], [0, 1]]).tolist() == [[2.0, 4.0, 0.0]]
    # ObjectNet's projection uses the mapping files' ImageNet ids (permuted 2012 ids, resolved by name)
    objectnet = datasets.eval_sets(imagenet_cfg(mini.root), None, ["ObjectNet"])[0]
    assert objectnet.project_logits.imagenet_ids == mini.objectnet_imagenet_ids
    one_hot = torch.zeros(len(mini.objectnet_imagenet_ids), 1000)
    for row, ids in enumerate(mini.objectnet_imagenet_ids):
        one_hot[row, ids[-1]] = 1.0
    assert objectnet.project_logits(one_hot).argmax(dim=1).tolist() == list(range(len(mini.objectnet_imagenet_ids)))


def test_heldout_split_is_deterministic_and_disjoint_from_training(mini):
    cfg = imagenet_cfg(mini.root, heldout_per_class=1)
    heldout = datasets.eval_sets(cfg, None, ["ImageNet2p"])[0]
    train = datasets.train_set(cfg, None)
    all_train = mini.labels["train"]
    held = samples_of(heldout)
    assert len(held) == 1000 and sorted(held.values()) == list(range(1000))  # one per class
    assert set(held).isdisjoint(p for p, _ in train.samples) and len(held) + len(train) == len(all_train)
    assert held == samples_of(datasets.eval_sets(cfg, None, ["ImageNet2p"])[0])  # same again
    other = samples_of(datasets.eval_sets(imagenet_cfg(mini.root, heldout_seed=1), None, ["ImageNet2p"])[0])
    assert other != held
    labels = np.repeat(np.arange(4), 50)
    mask = heldout_mask(labels, 13, seed=3)
    assert [int(mask[labels == c].sum()) for c in range(4)] == [13] * 4
    with pytest.raises(UserError, match="heldout_per_class"):
        heldout_mask(labels, 50, seed=0)


def test_official_index_file_selects_flagged_images(mini, tmp_path):
    paths = sorted(mini.labels["train"], key=lambda p: (mini.labels["train"][p], p))  # ImageFolder order: class-major, sorted names
    per_class = len(paths) // 1000
    chosen = [c * per_class + (c % per_class) for c in range(1000)]  # one image per class, at varying positions
    flags = np.zeros(len(paths), dtype=np.int64)
    flags[chosen] = 1
    index = tmp_path / "imagenet_98_idxs.npy"
    np.save(index, flags)
    cfg = imagenet_cfg(mini.root, heldout_split="official", heldout_index=str(index))
    held = datasets.eval_sets(cfg, None, ["ImageNet2p"])[0]
    assert [p for p, _ in held.dataset.samples] == [paths[i] for i in chosen]
    assert held.provenance["split"] == "official" and len(held.provenance["split_sha256"]) == 16
    assert len(datasets.train_set(cfg, None)) == len(paths) - 1000
    np.save(index, flags[:-1])
    with pytest.raises(UserError, match="has shape"):
        datasets.eval_sets(cfg, None, ["ImageNet2p"])
    np.save(index, flags * 2)
    with pytest.raises(UserError, match="only 0 and 1"):
        datasets.eval_sets(cfg, None, ["ImageNet2p"])
    twice = flags.copy()
    twice[chosen[7] + 1 if chosen[7] + 1 < 8 * per_class else chosen[7] - 1] = 1  # class 7 holds out two
    np.save(index, twice)
    with pytest.raises(UserError, match="holds 2 images of class 7 out, expected 1 per class"):
        datasets.eval_sets(cfg, None, ["ImageNet2p"])


def test_the_seeded_split_names_itself_and_differs_from_the_official_one(mini, tmp_path):
    seeded = datasets.eval_sets(imagenet_cfg(mini.root), None, ["ImageNet2p"])[0]
    assert seeded.provenance["split"] == "seeded:0"
    other = datasets.eval_sets(imagenet_cfg(mini.root, heldout_seed=1), None, ["ImageNet2p"])[0]
    assert other.provenance["split"] == "seeded:1" and other.provenance["split_sha256"] != seeded.provenance["split_sha256"]
    with pytest.raises(UserError, match="data.heldout_index: file not found"):
        datasets.eval_sets(
            imagenet_cfg(mini.root, heldout_split="official", heldout_index=str(tmp_path / "nope.npy")), None, ["ImageNet2p"]
        )


@pytest.mark.parametrize(
    "breakage, set_name, expected",
    [
        (lambda root: shutil.rmtree(root / "sketch"), "ImageNetSketch", "missing folder .*sketch"),
        (lambda root: shutil.rmtree(root / "imagenet/val/n01443537"), "ImageNet", "missing folder .*n01443537"),
        (lambda root: [p.unlink() for p in (root / "imagenet/val/n01440764").iterdir()], "ImageNet", "no images in .*n01440764"),
        (lambda root: (root / "imagenet-r/not_a_wnid").mkdir(), "ImageNetR", "unexpected folder .*not_a_wnid"),
        (lambda root: (root / "ImageNetV2-matched-frequency/1000").mkdir(), "ImageNetV2", "unexpected folder .*1000"),
        (
            lambda root: (root / "objectnet-1.0/mappings/imagenet_to_label_2012_v2").unlink(),
            "ObjectNet",
            "missing mapping file .*imagenet_to_label_2012_v2",
        ),
        (lambda root: shutil.rmtree(root / "objectnet-1.0/images/folder_002"), "ObjectNet", "missing folder .*folder_002"),
    ],
)
def test_bad_layout_names_expected_layout_and_first_missing_piece(mini, tmp_path, breakage, set_name, expected):
    root = tmp_path / "copy"
    folder = DEFAULT_DIRS["val" if set_name == "ImageNet" else set_name]
    shutil.copytree(mini.root / folder, root / folder)  # only the set under test, to keep the copy small
    breakage(root)
    with pytest.raises(UserError, match=expected) as err:
        datasets.eval_sets(imagenet_cfg(root), None, [set_name])
    message = str(err.value)
    assert message.startswith(f"{set_name}: expected ") and "docs/data.md" in message and "\n" not in message


def test_unknown_set_name_is_a_user_error(mini):
    with pytest.raises(UserError, match="unknown ImageNet-suite set 'ImageNetC'"):
        datasets.eval_sets(imagenet_cfg(mini.root), None, ["ImageNetC"])
