"""The cluster path computes what the reference code computes, checked against OpenAI's own CLIP code.

The oracle is OpenAI's model code (`clip.model.CLIP` from PyPI `clip-anytorch`) with random weights,
OpenAI's preprocessing (`clip.clip._transform`), the official head (`ModelWrapper(normalize=True)`: a
linear layer on L2-normalised image features) and the official protocol's projections: ImageNet-R/A keep
the logit columns of their 200 wnids, ObjectNet takes the max over the ImageNet classes mapped to each
of its classes after cropping a 2-px border, ImageNet2p is the train images the split file marks.

The checkpoint is written in the official release format (the wrapper's state dict with the text
transformer deleted, `torch.save`), imported with `python -m eval.convert import-official` and evaluated
with `python -m eval` on generated folders in every public layout. Logits must agree within 1e-4 and
every prediction must be equal.

The tower is the project's `ViT-Tiny-BPE` (ViT-B/32's structure and QuickGELU, 2 layers of width 64 at
32 px, one head as OpenAI's code gives width 64), so a few thousand images take seconds; the test below
it checks that every `conf/model/*.yaml` builds the activation its weights need.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import REPO, run_in_process
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from datasets import eval_sets
from datasets.imagenet_miniature import SPLIT_FILE, make_miniature, register_tiny_vit
from eval.convert import main as convert_main
from models.checkpoint import read_meta
from models.factory import activation_of, create_clip, wants_quick_gelu
from tests.test_eval_helpers import imagenet_cfg
from tests.test_interop_clip_benchmark import peer_wnid_list

clip = pytest.importorskip("clip")  # OpenAI's CLIP model code (clip-anytorch)
from clip.clip import _transform as openai_transform  # noqa: E402
from clip.model import CLIP as OpenAICLIP  # noqa: E402

SETS = ("ImageNet2p", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ObjectNet", "ImageNetA")


# --- every config builds the activation its weights need ----------------------------------------------


@pytest.mark.parametrize("config", sorted((REPO / "conf" / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_builds_the_activation_of_its_weights(config):
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
    arch, tag = str(cfg["arch"]), cfg["pretrained"]
    register_tiny_vit()
    model_cfg = open_clip.get_model_config(arch)
    if tag and not str(tag).startswith("$"):  # an open_clip tag: its own record of the activation
        expected = bool(open_clip.get_pretrained_cfg(arch, str(tag))["quick_gelu"])
    else:  # random init or the project's own weights file: the architecture's config
        expected = bool(model_cfg.get("quick_gelu", False))
    assert wants_quick_gelu(arch, tag if tag and not str(tag).startswith("$") else None) == expected
    model, _, _ = create_clip(arch, pretrained=None, activation=None if tag is None else ("quick_gelu" if expected else "gelu"))
    built = activation_of(model.visual)
    if "vision_cfg" in model_cfg and "layers" in model_cfg["vision_cfg"] and isinstance(model_cfg["vision_cfg"]["layers"], int):
        assert built == ("quick_gelu" if expected else "gelu"), f"{config.name}: {arch} builds {built}"
    else:  # a ResNet tower has no (Quick)GELU
        assert built is None and not expected


def test_openai_tag_on_the_plain_arch_still_builds_quickgelu():
    """open_clip >= 3 builds GELU for ViT-B-32 + openai and only warns; create_clip follows the tag."""
    assert wants_quick_gelu("ViT-B-32", "openai") and not wants_quick_gelu("ViT-B-32", None)
    model, _, _ = create_clip("ViT-B-32", pretrained=None, activation="quick_gelu")
    assert activation_of(model.visual) == "quick_gelu"


# --- the oracle ---------------------------------------------------------------------------------------


class OfficialWrapper(torch.nn.Module):
    """model-soups' ModelWrapper(normalize=True) around OpenAI's CLIP: text transformer deleted."""

    def __init__(self, model: torch.nn.Module, head: torch.Tensor):
        super().__init__()
        self.model = model
        self.classification_head = torch.nn.Linear(head.shape[1], head.shape[0])
        with torch.no_grad():
            self.classification_head.weight.copy_(head)
            self.classification_head.bias.normal_(0, 0.5)
        del self.model.transformer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(images)
        return self.classification_head(features / features.norm(dim=-1, keepdim=True))


def openai_vit_tiny() -> torch.nn.Module:
    """OpenAI's CLIP class with ViT-Tiny-BPE's image tower (random weights, float32)."""
    torch.manual_seed(0)
    model = OpenAICLIP(
        embed_dim=32,
        image_resolution=32,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    with torch.no_grad():  # OpenAI's init leaves the biases at 0 and the activations small; spread them
        for name, p in model.visual.named_parameters():
            if "ln_" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model.float().eval()


def _folder_samples(root: Path) -> list[tuple[str, int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    return [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]


def oracle_sets(root: Path, r_wnids: list[str], a_wnids: list[str]) -> dict[str, tuple[list[tuple[str, int]], object]]:
    """Per set: (path, label) samples as the official loaders list them, and the logit projection."""
    wnids = sorted(d.name for d in (root / "imagenet" / "train").iterdir())
    train = _folder_samples(root / "imagenet" / "train")
    held = np.load(root / SPLIT_FILE)
    v2 = [(str(f), int(f.parent.name)) for f in sorted((root / "ImageNetV2-matched-frequency").glob("*/*.jpeg"))]
    sets: dict[str, tuple[list[tuple[str, int]], object]] = {
        "ImageNet2p": ([s for s, h in zip(train, held) if h == 1], None),
        "ImageNet": (_folder_samples(root / "imagenet" / "val"), None),
        "ImageNetV2": (v2, None),
        "ImageNetSketch": (_folder_samples(root / "sketch"), None),
    }
    for name, folder, subset in (("ImageNetR", "imagenet-r", r_wnids), ("ImageNetA", "imagenet-a", a_wnids)):
        mask = torch.tensor([w in set(subset) for w in wnids])  # official: logits[:, class_sublist_mask]
        sets[name] = (_folder_samples(root / folder), lambda x, m=mask: x[:, m])
    # ObjectNet: mapped folders only; labels index the mapped classes; max over their ImageNet logits
    maps = root / "objectnet-1.0" / "mappings"
    folder_to_name = json.loads((maps / "folder_to_objectnet_label.json").read_text())
    name_to_imagenet = json.loads((maps / "objectnet_to_imagenet_1k.json").read_text())
    names_2012 = (maps / "imagenet_to_label_2012_v2").read_text().splitlines()
    pytorch_of_2012 = {v: int(k) for k, v in json.loads((maps / "pytorch_to_imagenet_2012_id.json").read_text()).items()}
    mapped = sorted(f for f, n in folder_to_name.items() if n in name_to_imagenet)
    columns = [[pytorch_of_2012[names_2012.index(x.strip())] for x in name_to_imagenet[folder_to_name[f]].split(";")] for f in mapped]
    samples = [(str(p), i) for i, f in enumerate(mapped) for p in sorted((root / "objectnet-1.0" / "images" / f).iterdir())]
    sets["ObjectNet"] = (samples, lambda x: torch.stack([x[:, c].max(dim=1).values for c in columns], dim=1))
    return sets


def crop_border(image: Image.Image) -> Image.Image:
    """The official ObjectNet loader crops 2 px on every side before the preprocessing."""
    width, height = image.size
    return image.crop((2, 2, width - 2, height - 2))


@torch.no_grad()
def oracle_logits(wrapper: torch.nn.Module, samples: list[tuple[str, int]], project, crop: bool) -> torch.Tensor:
    preprocess = openai_transform(32)
    out = []
    for start in range(0, len(samples), 256):
        images = []
        for path, _ in samples[start : start + 256]:
            with Image.open(path) as image:
                image = image.convert("RGB")
                images.append(preprocess(crop_border(image) if crop else image))
        logits = wrapper(torch.stack(images))
        out.append(project(logits) if project else logits)
    return torch.cat(out)


@pytest.fixture(scope="module")
def official_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    r_wnids, a_wnids = peer_wnid_list("imagenet_r_wnids"), peer_wnid_list("imagenet_a_wnids")
    make_miniature(base / "data", r_wnids=r_wnids, a_wnids=a_wnids, size=20, seed=3, train_per_class=2, objectnet_classes=6)
    model = openai_vit_tiny()
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(1000, 32, generator=generator) * 3.0 / math.sqrt(32) * 10
    wrapper = OfficialWrapper(model, head).eval()
    official = base / "official" / "model_0.pt"
    official.parent.mkdir()
    torch.save(wrapper.state_dict(), official)
    return {"base": base, "wrapper": wrapper, "official": official, "r": r_wnids, "a": a_wnids}


def test_import_and_eval_equal_openai_clip_on_every_set(official_run):
    base = official_run["base"]
    imported = base / "imported"
    assert convert_main(["import-official", str(official_run["official"]), "--out", str(imported), "--arch", "ViT-Tiny-BPE"]) == 0
    meta = read_meta(imported / "model_0.safetensors")
    assert meta.activation == "quick_gelu" and meta.hparams["source"] == "model-soups-official"

    result = run_in_process(
        "eval",
        "data=imagenet",
        f"data.root={base / 'data'}",
        f"data.heldout_index={base / 'data' / SPLIT_FILE}",
        "data.heldout_per_class=1",
        "data.workers=0",
        f"checkpoints=[{imported / 'model_0.safetensors'}]",
        f"out={base / 'eval'}",
        "eval.amp=false",
        "eval.save_logits=true",
        "eval.logits_dtype=float32",
        env={"OMP_NUM_THREADS": "1", "MODEL_SOUPS_RUNS": str(base / "runs")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = {json.loads(line)["dataset"]: json.loads(line) for line in (base / "eval" / "results.jsonl").read_text().splitlines()}
    assert set(records) == set(SETS)
    assert records["ImageNet2p"]["split"] == "official" and all(r["precision"] == "fp32" for r in records.values())

    oracle = oracle_sets(base / "data", official_run["r"], official_run["a"])
    data_cfg = imagenet_cfg(base / "data", heldout_split="official", heldout_index=str(base / "data" / SPLIT_FILE))
    for name in SETS:
        samples, project = oracle[name]
        expected = oracle_logits(official_run["wrapper"], samples, project, crop=name == "ObjectNet")
        saved = load_file(str(base / "eval" / "logits" / "model_0" / f"{name}.safetensors"))
        labels = torch.tensor([label for _, label in samples])
        ours = [str(path) for path, _ in eval_sets(data_cfg, None, [name])[0].dataset.samples]
        assert sorted(ours) == sorted(path for path, _ in samples), f"{name}: not the same images"
        order = torch.tensor([ours.index(path) for path, _ in samples])
        got = saved["logits"][order]
        assert torch.equal(saved["labels"][order], labels), name
        worst = float((got - expected).abs().max())
        assert worst < 1e-4, f"{name}: logits differ from OpenAI's CLIP by up to {worst}"
        assert torch.equal(got.argmax(1), expected.argmax(1)), f"{name}: predictions differ"
        top1 = int((expected.argmax(1) == labels).sum()) / len(labels)
        assert records[name]["top1"] == pytest.approx(top1, abs=1e-12) and records[name]["n"] == len(samples), name


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


def test_official_checkpoint_with_the_wrong_shapes_for_the_arch_is_refused(official_run, tmp_path, capsys):
    out = tmp_path / "imported"
    code = convert_main(["import-official", str(official_run["official"]), "--out", str(out), "--arch", "ViT-B-32-quickgelu"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "do not fit architecture ViT-B-32-quickgelu" in line and "model_0.pt" in line
    assert not out.exists() or not any(out.iterdir())


def _eval(base: Path, checkpoint: Path, out: Path, *extra: str):
    return run_in_process(
        "eval",
        "data=imagenet",
        f"data.root={base / 'data'}",
        "data.heldout_per_class=1",
        "data.workers=0",
        f"checkpoints=[{checkpoint}]",
        f"out={out}",
        "eval.sets=heldout",
        *extra,
        env={"OMP_NUM_THREADS": "1", "MODEL_SOUPS_RUNS": str(out.parent / "runs")},
    )


def test_a_split_file_of_the_wrong_length_is_refused(official_run, tmp_path):
    base = official_run["base"]
    short = tmp_path / "short.npy"
    np.save(short, np.load(base / "data" / SPLIT_FILE)[:-1])
    imported = tmp_path / "imported"
    assert convert_main(["import-official", str(official_run["official"]), "--out", str(imported), "--arch", "ViT-Tiny-BPE"]) == 0
    result = _eval(base, imported / "model_0.safetensors", tmp_path / "eval", f"data.heldout_index={short}")
    assert result.returncode == 2 and "data.heldout_index" in _one_line(result.stderr) and "short.npy" in result.stderr
    assert not (tmp_path / "eval" / "results.jsonl").exists()


def test_official_checkpoints_on_another_split_are_refused_as_contaminated(official_run, tmp_path):
    base = official_run["base"]
    imported = tmp_path / "imported"
    assert convert_main(["import-official", str(official_run["official"]), "--out", str(imported), "--arch", "ViT-Tiny-BPE"]) == 0
    result = _eval(base, imported / "model_0.safetensors", tmp_path / "eval", "data.heldout_split=seeded")
    line = _one_line(result.stderr)
    assert result.returncode == 2 and "seeded:0" in line and "training images" in line
    assert not (tmp_path / "eval" / "results.jsonl").exists()


def test_an_lp_init_that_does_not_exist_is_refused(tmp_path):
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = run_in_process(
        "finetune", "data.scale=small", "finetune.init=lp", f"finetune.lp.init_from={tmp_path / 'nope.safetensors'}", env=env
    )
    line = _one_line(result.stderr)
    assert result.returncode == 2 and "finetune.lp.init_from" in line and "nope.safetensors" in line
    assert not list((tmp_path / "runs").rglob("*.safetensors")) and not list((tmp_path / "runs").rglob("results.jsonl"))
