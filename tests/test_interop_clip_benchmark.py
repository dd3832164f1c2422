"""Cross-check against a peer: our eval and clip_benchmark agree on every example.

A tiny open_clip ViT (random weights, open_clip's BPE tokenizer) gets a zero-shot head and is saved as a
project checkpoint; `eval.runner.evaluate_checkpoints` scores it on miniature ImageNet, V2, Sketch, R and
A trees in their public layouts and saves its logits. The same checkpoint is exported as a full open_clip
checkpoint (`python -m eval.convert export-open-clip`) and run through clip_benchmark's own dataset
builders and zero-shot code in float32 (its `--no_amp`). Labels, predictions and top-1 must be identical.
ImageNet2p is clip_benchmark's ImageNet train folder restricted to the images the split file marks, as the
official code does.

Both sides use open_clip's ImageNet class names and the same two of the OpenAI templates (clip_benchmark
ships identical names and the same 80 templates; two keep the test fast). ObjectNet is not compared here:
clip_benchmark builds a 113-way head from ObjectNet's class names and does not crop the 2-px border,
where the paper's protocol projects 1000-way logits (max over mapped classes) - see docs/data.md; the
paper's ObjectNet protocol is checked against OpenAI's CLIP code in test_reference_equivalence.py.
"""

from __future__ import annotations

import ast
import inspect

import numpy as np
import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from datasets import eval_sets
from datasets.imagenet_miniature import SPLIT_FILE, make_miniature, register_tiny_vit
from eval.convert import main as convert_main
from eval.runner import evaluate_checkpoints
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.classifier import classifier_from_clip, zeroshot_head_weight
from models.schemas import EvalOptions
from tests.test_eval_helpers import one_thread  # noqa: F401

clip_benchmark = pytest.importorskip("clip_benchmark")
from clip_benchmark.datasets import builder, imagenetv2  # noqa: E402
from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier  # noqa: E402
from clip_benchmark.models.open_clip import load_open_clip  # noqa: E402

TEMPLATES = list(open_clip.OPENAI_IMAGENET_TEMPLATES[:2])
# our set name -> (clip_benchmark dataset name, its root relative to the miniature root)
PEER_SETS = {
    "ImageNet2p": ("imagenet1k-unverified", "imagenet"),  # its train split, restricted to the split file's held-out images
    "ImageNet": ("imagenet1k-unverified", "imagenet"),
    "ImageNetV2": ("imagenetv2", "."),
    "ImageNetSketch": ("imagenet_sketch", "sketch"),
    "ImageNetR": ("imagenet-r", "imagenet-r"),
    "ImageNetA": ("imagenet-a", "imagenet-a"),
}


def peer_wnid_list(variable: str) -> list[str]:
    """clip_benchmark's hard-coded R/A wnid lists (local variables of build_dataset), read from its source."""
    tree = ast.parse(inspect.getsource(builder.build_dataset).lstrip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == variable for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    raise AssertionError(f"{variable} not found in clip_benchmark's build_dataset")


@pytest.fixture(scope="module")
def tiny_arch() -> str:
    return register_tiny_vit()


@pytest.mark.usefixtures("one_thread")
def test_predictions_equal_clip_benchmark(tmp_path, tiny_arch, monkeypatch):
    mini = make_miniature(
        tmp_path / "data",
        sets=("train", "val", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA"),
        train_per_class=2,
        r_wnids=peer_wnid_list("imagenet_r_wnids"),
        a_wnids=peer_wnid_list("imagenet_a_wnids"),
        size=24,
        seed=1,
    )
    torch.manual_seed(0)
    clip_model, _, _ = open_clip.create_model_and_transforms(tiny_arch)
    clip_model.eval()
    text_tower = tmp_path / "tiny_clip.pt"
    torch.save(clip_model.state_dict(), text_tower)
    tokenizer = open_clip.get_tokenizer(tiny_arch)
    head = zeroshot_head_weight(clip_model, tokenizer, list(open_clip.IMAGENET_CLASSNAMES), TEMPLATES)
    checkpoint = tmp_path / "zeroshot" / "model.safetensors"
    save_checkpoint(
        checkpoint,
        classifier_from_clip(clip_model, head).state_dict(),
        CheckpointMeta(tiny_arch, str(text_tower), 1000, "imagenet1k", "zeroshot"),
    )

    # ours: the eval stage, logits saved per set
    data_cfg = OmegaConf.create(
        {
            "name": "imagenet",
            "root": str(mini.root),
            "heldout": "ImageNet2p",
            "id": "ImageNet",
            "shifts": list(PEER_SETS)[2:],
            "heldout_split": "official",
            "heldout_index": str(mini.root / SPLIT_FILE),
            "heldout_per_class": 1,
        }
    )
    eval_cfg = OmegaConf.structured(
        EvalOptions(sets=list(PEER_SETS), amp=False, save_logits=True, logits_dtype="float32", batch_size=128, workers=0)
    )
    out = tmp_path / "eval"
    records = {r["dataset"]: r for r in evaluate_checkpoints([str(checkpoint)], data_cfg, eval_cfg, out, torch.device("cpu"))}
    our_sets = {s.name: s for s in eval_sets(data_cfg, None, list(PEER_SETS))}

    # the peer: clip_benchmark on the exported full open_clip checkpoint
    exported = tmp_path / "exported.pt"
    assert convert_main(["export-open-clip", str(checkpoint), "--out", str(exported), "--text-tower", str(text_tower)]) == 0
    model, transform, peer_tokenizer = load_open_clip(tiny_arch, pretrained=str(exported), device="cpu")
    model.eval()
    monkeypatch.setattr(imagenetv2, "V2_DATASET_SIZE", len(mini.labels["ImageNetV2"]))  # else it downloads the real set
    peer_templates = [t("{c}") for t in TEMPLATES]
    for name, (peer_name, sub) in PEER_SETS.items():
        split = "train" if name == "ImageNet2p" else "test"
        dataset = builder.build_dataset(peer_name, root=str(mini.root / sub), transform=transform, split=split, download=False)
        if name == "ImageNet2p":  # the official protocol: ImageFolder over train, the images the split file marks
            held = np.flatnonzero(np.load(mini.root / SPLIT_FILE))
            dataset.samples = [dataset.samples[i] for i in held]
            dataset.targets = [dataset.targets[i] for i in held]
        classifier = zero_shot_classifier(model, peer_tokenizer, dataset.classes, peer_templates, "cpu", amp=False)
        logits, targets = run_classification(model, classifier, DataLoader(dataset, batch_size=128), "cpu", amp=False)
        peer_paths = [str(p) for p in dataset.fnames] if name == "ImageNetV2" else [p for p, _ in dataset.samples]
        peer = {path: (int(t), int(p)) for path, t, p in zip(peer_paths, targets, logits.argmax(dim=1))}

        saved = load_file(str(out / "logits" / "zeroshot" / f"{name}.safetensors"))
        ours = {
            path: (int(t), int(p))
            for (path, _), t, p in zip(our_sets[name].dataset.samples, saved["labels"], saved["logits"].argmax(dim=1))
        }
        if name == "ImageNet2p":
            written = {path: mini.labels["train"][path] for path, _ in dataset.samples}
        else:
            written = mini.labels["val" if name == "ImageNet" else name]
        assert len(ours) == len(peer) == len(written), name
        assert ours == peer, f"{name}: {sum(ours[k] != peer[k] for k in ours)} examples differ from clip_benchmark"
        assert {path: label for path, (label, _) in ours.items()} == written, name  # labels as written
        peer_top1 = int((logits.argmax(dim=1) == targets).sum()) / len(targets)
        assert records[name]["top1"] == pytest.approx(peer_top1, abs=1e-12), name
        assert len(dataset.classes) == len(our_sets[name].classnames) and list(dataset.classes) == our_sets[name].classnames


def test_export_loads_in_open_clip(tmp_path, tiny_arch):
    """The exported file is a full open_clip checkpoint: image tower from ours, text tower from the source."""
    torch.manual_seed(1)
    clip_model, _, _ = open_clip.create_model_and_transforms(tiny_arch)
    text_tower = tmp_path / "clip.pt"
    torch.save(clip_model.state_dict(), text_tower)
    source_proj = clip_model.visual.proj.detach().clone()
    classifier = classifier_from_clip(clip_model, num_classes=3)
    with torch.no_grad():
        classifier.visual.proj.mul_(2.0)  # a "fine-tuned" image tower that differs from the source
    checkpoint = save_checkpoint(
        tmp_path / "ft.safetensors", classifier.state_dict(), CheckpointMeta(tiny_arch, str(text_tower), 3, "toy3", "individual")
    )
    out = tmp_path / "full.pt"
    assert convert_main(["export-open-clip", str(checkpoint), "--out", str(out), "--text-tower", str(text_tower)]) == 0
    loaded = open_clip.create_model(tiny_arch, pretrained=str(out))
    torch.testing.assert_close(loaded.visual.proj, classifier.visual.proj)
    torch.testing.assert_close(loaded.token_embedding.weight, clip_model.token_embedding.weight)
    torch.testing.assert_close(loaded.visual.proj, 2.0 * source_proj)


def test_export_without_text_tower_is_one_line_error(tmp_path, tiny_arch, capsys):
    clip_model, _, _ = open_clip.create_model_and_transforms(tiny_arch)
    checkpoint = save_checkpoint(
        tmp_path / "ft.safetensors",
        classifier_from_clip(clip_model, num_classes=3).state_dict(),
        CheckpointMeta(tiny_arch, None, 3, "toy3", "individual"),
    )
    assert convert_main(["export-open-clip", str(checkpoint), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--text-tower" in err
    assert not (tmp_path / "x.pt").exists()
