"""ImageNet-ReaL and multilabel accuracy: from the ImageNet pass, against hand computations from the label files."""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources

import pandas as pd
import pytest
import torch
from conftest import run_in_process
from omegaconf import OmegaConf

import datasets
from datasets.imagenet_miniature import make_miniature
from datasets.imagenet_relabel import PROTOCOLS, RealAccuracy, id_relabellings, multilabel_accuracy, read_multilabel
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.classifier import classifier_from_clip
from models.errors import UserError
from models.factory import create_clip
from tests.test_eval_helpers import TINY_ARCH

# 1200 official val indices, every 7th: image k sits in wnid folder k % 1000, so its label is k % 1000
VAL_INDICES = list(range(1, 8401, 7))
# Fixed predictions: 508 and 998 are the commonest ReaL labels among the first val images
FIXED_CLASSES = (508, 998)
COMMON = ["data=imagenet", "data.workers=0", "data.batch_size=250", "eval.sets=[ImageNet]", "hydra.output_subdir=null"]
SOUPS = ["model=tiny_clip", "model.classes=imagenet1k", "device=cpu", "data.heldout_split=seeded", "data.heldout_per_class=1"]


@functools.cache
def timm_real_labels() -> list[list[int]]:
    """timm's file, read here directly (not through the project's loader), once."""
    return json.loads((resources.files("timm.data") / "_info" / "imagenet_real_labels.json").read_text())


def fixed_class_checkpoints(folder, classes) -> list:
    """Checkpoints whose head is all bias: every image is predicted as `cls`. Biases 10, 20, ...: averaged
    (a uniform soup) or their logits averaged (an ensemble), the last class wins."""
    paths = []
    for k, cls in enumerate(classes):
        clip_model, _, _ = create_clip(TINY_ARCH)
        classifier = classifier_from_clip(clip_model, num_classes=1000)
        with torch.no_grad():
            classifier.head.bias[cls] = 10.0 * (k + 1)
        path = save_checkpoint(
            folder / f"always{cls}" / "model.safetensors",
            classifier.state_dict(),
            CheckpointMeta(TINY_ARCH, None, 1000, "imagenet1k", "individual"),
        )
        (path.parent / "DONE").write_text("")
        paths.append(path)
    return paths


def val_name(k: int) -> str:
    return f"ILSVRC2012_val_{VAL_INDICES[k]:08d}.JPEG"


def annotations(fixed: int) -> dict:
    """A file in the authors' format. Images 0, 1000 (both class 0) and 2 (class 2) annotated; 3 problematic; one V2 image."""
    from datasets.imagenet import imagenet_wnids

    wnids = imagenet_wnids()
    return {
        "initial_annots": {
            val_name(0): {"correct": [wnids[0]], "unclear": [wnids[fixed]]},  # accepted (lenient with unclear)
            val_name(1000): {"correct": [wnids[1]], "wrong": [wnids[fixed]]},  # wrong
            val_name(2): {"correct": [wnids[fixed], wnids[2]]},  # accepted
            val_name(3): {"correct": [wnids[fixed]]},  # problematic: left out
            "some_imagenetv2_image.jpeg": {"correct": [wnids[fixed]]},  # another set: ignored
        },
        "problematic_images": {val_name(3): {}},
        "imagenet_m": [],
    }


@pytest.fixture(scope="module")
def official_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("relabel")
    mini = make_miniature(root / "data", sets=("train", "val"), train_per_class=2, val_indices=VAL_INDICES)
    checkpoints = fixed_class_checkpoints(root / "sweep", FIXED_CLASSES)
    labels_file = root / "human_accuracy_v3.0.0.json"
    labels_file.write_text(json.dumps(annotations(FIXED_CLASSES[0])))
    return root, mini, checkpoints, labels_file


def test_real_and_multilabel_from_the_imagenet_pass_match_hand_computation(official_tree, tmp_path):
    root, mini, _, labels_file = official_tree
    out = tmp_path / "eval"
    result = run_in_process(
        "eval", *COMMON, f"data.root={mini.root}", f"checkpoints={root / 'sweep'}", f"out={out}", f"eval.multilabel={labels_file}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_key = {(r["model_id"], r["dataset"]): r for r in records}
    real = timm_real_labels()
    sets = [real[i - 1] for i in VAL_INDICES]
    empty = sum(1 for s in sets if not s)
    assert len(sets) == 1200 and empty == 71  # of these images, 71 have no ReaL label
    for cls in FIXED_CLASSES:
        top1 = by_key[(f"always{cls}", "ImageNet")]
        assert top1["top1"] == 1 / 1200  # classes 508 and 998 have one image each
        record = by_key[(f"always{cls}", "ImageNetReaL")]
        hits = sum(1 for s in sets if cls in s)
        assert record["role"] == "id_relabel" and record["of_dataset"] == "ImageNet"
        assert record["n"] == 1200 - empty and record["excluded_empty"] == empty
        assert record["top1"] == hits / (1200 - empty) and hits > 0
    # multilabel, predicting FIXED_CLASSES[0]: class 0 has images 0 (accepted) and 1000 (wrong) -> 1/2; class 2 -> 1/1
    multilabel = by_key[(f"always{FIXED_CLASSES[0]}", "ImageNetMultilabel")]
    assert multilabel["top1"] == pytest.approx((1 / 2 + 1) / 2) and multilabel["pooled_top1"] == pytest.approx(2 / 3)
    assert multilabel["n"] == 3 and multilabel["excluded_problematic"] == 1 and multilabel["classes_scored"] == 2
    assert multilabel["protocol"] == "tfds"  # the default, named in each record
    assert by_key[(f"always{FIXED_CLASSES[1]}", "ImageNetMultilabel")]["top1"] == 0.0
    assert "multilabel column is left out" not in result.stdout + result.stderr

    # the main table of this run shows both columns, in percent
    plots = run_in_process("plots", f"results={out}", f"out={tmp_path / 'plots'}", "figure=table", "hydra.output_subdir=null")
    assert plots.returncode == 0, plots.stderr[-2000:]
    table = pd.read_csv(tmp_path / "plots" / "main_table.csv", index_col="method")
    # eval.sets=[ImageNet]: no held-out records, so no "best individual (held-out)" is chosen and the table says so
    assert "best_individual" not in json.loads((tmp_path / "plots" / "main_table_models.json").read_text())
    assert "no individual has a held-out record: no best individual chosen" in (tmp_path / "plots" / "main_table.md").read_text()
    best_real = max(by_key[(f"always{cls}", "ImageNetReaL")]["top1"] for cls in FIXED_CLASSES)
    assert list(table.columns[:4]) == ["heldout", "id", "ImageNetReaL", "ImageNetMultilabel"]
    assert table.loc["oracle", "ImageNetReaL"] == pytest.approx(round(100 * best_real, 2))  # the oracle: best per set
    assert "ImageNetReaL" in (tmp_path / "plots" / "main_table.md").read_text().splitlines()[0]


@pytest.mark.parametrize("soup", ["uniform", "ensemble"])
def test_soups_record_real_for_weight_and_output_space_soups(official_tree, tmp_path, soup):
    root, mini, _, _ = official_tree
    out = tmp_path / soup
    result = run_in_process(
        "soups", *COMMON, *SOUPS, f"soup={soup}", f"data.root={mini.root}", f"ingredients={root / 'sweep'}", f"out={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["dataset"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    sets = [timm_real_labels()[i - 1] for i in VAL_INDICES]
    scored = [s for s in sets if s]
    # both soups predict 998 everywhere (the larger bias wins): ReaL = images whose set holds 998
    assert records["ImageNetReaL"]["top1"] == sum(998 in s for s in scored) / len(scored)
    assert records["ImageNetReaL"]["role"] == "id_relabel" and records["ImageNetReaL"]["kind"] == records["ImageNet"]["kind"]
    assert records["ImageNet"]["top1"] == 1 / 1200


def test_without_a_multilabel_file_the_run_says_so_once(official_tree, tmp_path):
    root, mini, checkpoints, _ = official_tree
    result = run_in_process("eval", *COMMON, f"data.root={mini.root}", f"checkpoints={checkpoints[0]}", f"out={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("multilabel column is left out") == 1
    datasets_seen = [json.loads(line)["dataset"] for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert datasets_seen == ["ImageNet", "ImageNetReaL"]


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def test_bad_inputs_are_one_line_and_write_nothing(official_tree, tmp_path):
    root, official, checkpoints, _ = official_tree
    mini = make_miniature(tmp_path / "data", sets=("val", "ImageNetR"))  # val names are not official
    args = [*COMMON[:-2], f"data.root={mini.root}", f"checkpoints={checkpoints[0]}", "eval.sets=[ImageNetR,ImageNet]"]
    line = one_error_line(run_in_process("eval", *args, "eval.real=true", f"out={tmp_path / 'named'}"))
    assert "eval.real=true" in line and "ILSVRC2012_val_%08d.JPEG" in line and "eval.real=false" in line
    assert not (tmp_path / "named" / "results.jsonl").exists()  # ImageNetR comes first, yet nothing was scored
    # auto: skipped, saying why; the ImageNet records are written without a ReaL one
    auto = run_in_process("eval", *args, f"out={tmp_path / 'auto'}")
    assert auto.returncode == 0 and "ReaL: skipped" in auto.stdout + auto.stderr
    assert [json.loads(x)["dataset"] for x in (tmp_path / "auto" / "results.jsonl").read_text().splitlines()] == ["ImageNetR", "ImageNet"]
    # a malformed multilabel file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"initial_annots": {val_name(0): {"correct": ["n99999999"]}}, "problematic_images": {}}))
    args = [*COMMON, f"data.root={official.root}", f"checkpoints={checkpoints[0]}", f"eval.multilabel={bad}"]
    line = one_error_line(run_in_process("eval", *args, f"out={tmp_path / 'malformed'}"))
    assert str(bad) in line and "n99999999" in line and "docs/data.md" in line
    assert not (tmp_path / "malformed" / "results.jsonl").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"problematic_images": {}}), "no 'initial_annots'"),
        (json.dumps({"initial_annots": {}}), "problematic_images"),
        (json.dumps({"initial_annots": {"ILSVRC2012_val_00000001.JPEG": {"right": []}}, "problematic_images": []}), "keys among"),
        (json.dumps({"initial_annots": {"x.jpeg": {"correct": []}}, "problematic_images": []}), "no annotated ImageNet val image"),
    ],
)
def test_malformed_multilabel_files_name_the_problem(tmp_path, content, problem):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(UserError, match=problem):
        read_multilabel(str(path))


def test_real_score_aligns_predictions_with_file_names_and_skipped_images():
    real = timm_real_labels()
    names = [f"/v/n0/ILSVRC2012_val_{i:08d}.JPEG" for i in (2, 1, 3, 5, 4)]  # 1 has an empty set, image 2 is [970, 795]
    assert real[0] == [] and real[1] == [970, 795] and real[2] == [230, 231] and real[3] == [809]
    predictions = torch.tensor([795, 0, 231, 809])  # for images 2, 1, 3, 4 (5 was unreadable and skipped)
    score = RealAccuracy(names).score(predictions, torch.zeros(4, dtype=torch.long), skipped=[names[3]])
    # image 1 excluded (empty set); 2 -> 795 correct, 3 -> 231 correct, 4 -> 809 correct iff 809 in its set
    expected_correct = 2 + (809 in real[3])
    assert (score.correct, score.n, score.extra["excluded_empty"]) == (expected_correct, 3, 1)


def test_multilabel_is_the_mean_of_per_class_accuracies():
    accepted = {"a": {1}, "b": {2}, "c": {3}, "d": {4}, "e": {5}}
    result = multilabel_accuracy([1, 9, 9, 3, 5], ["a", "b", "x", "c", "e"], [0, 0, 0, 1, 2], accepted, problematic={"e"})
    # class 0: a right, b wrong (x unannotated) -> 1/2; class 1: c right -> 1; e problematic
    assert result == {"correct": 2, "n": 3, "top1": 0.75, "classes": 2, "excluded_problematic": 1}


def test_both_multilabel_protocols_by_hand(tmp_path):
    """tfds: `correct` or `unclear` counts, per-class mean; shankar (human_accuracy.py): `correct` only, pooled."""
    from datasets.imagenet import imagenet_wnids

    wnids = imagenet_wnids()
    name = "ILSVRC2012_val_{:08d}.JPEG".format
    annotations = {
        name(1): {"correct": [wnids[1]], "unclear": [wnids[7]]},  # label 0
        name(2): {"correct": [wnids[2]]},  # label 0
        name(3): {"correct": [wnids[3]], "wrong": [wnids[8]]},  # label 1
        name(4): {"correct": [wnids[4]]},  # label 1
        name(5): {"correct": [wnids[5]]},  # label 1
        name(6): {"correct": [wnids[6]]},  # problematic
    }
    path = tmp_path / "human_accuracy_v3.0.0.json"
    path.write_text(json.dumps({"initial_annots": annotations, "problematic_images": {name(6): "ambiguous"}}))
    predictions, names, labels = [7, 2, 3, 9, 9, 6], [name(i) for i in range(1, 7)], [0, 0, 1, 1, 1, 1]
    results = {}
    for protocol, (marks, per_class) in PROTOCOLS.items():
        accepted, problematic = read_multilabel(str(path), marks)
        results[protocol] = multilabel_accuracy(predictions, names, labels, accepted, problematic, per_class)
    # tfds: image 1 right through `unclear`; class 0: 2/2, class 1: 1/3 -> (1 + 1/3) / 2
    assert results["tfds"]["top1"] == pytest.approx((1 + 1 / 3) / 2) and results["tfds"]["correct"] == 3
    # shankar: image 1 wrong (`unclear` does not count); images 2 and 3 right of 5 -> 2/5
    assert results["shankar"]["top1"] == pytest.approx(2 / 5) and results["shankar"]["correct"] == 2
    assert results["shankar"]["excluded_problematic"] == results["tfds"]["excluded_problematic"] == 1


def test_an_unknown_multilabel_protocol_is_a_user_error():
    eval_set = datasets.EvalSet("ImageNet", "id", dataset=type("D", (), {"samples": []})(), classnames=["a"])
    with pytest.raises(UserError, match="eval.multilabel_protocol=tfsd"):
        id_relabellings(OmegaConf.create({"real": "false", "multilabel": None, "multilabel_protocol": "tfsd"}), eval_set)


def test_the_world_skips_relabelling_and_says_so(caplog):
    eval_set = datasets.EvalSet("photo", "id", dataset=[], classnames=["a"])
    with caplog.at_level(logging.INFO):
        assert datasets.relabellings(OmegaConf.create({"name": "world"}), OmegaConf.create({"real": "auto"}), eval_set) == []
    assert "embedded world has no relabelled test set" in caplog.text
