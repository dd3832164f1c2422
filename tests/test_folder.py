"""`data=folder`: your own image-folder dataset, its held-out split and layout checks, and the whole pipeline on it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, early_env, run_in_process
from folder_dataset import CLASSES, render
from omegaconf import OmegaConf
from PIL import Image

import datasets
from datasets import folder
from datasets.imagenet_folders import load_rgb
from models.checkpoint import load_checkpoint, save_checkpoint
from models.classifier import check_prompt_words
from models.errors import UserError
from models.world_tokenizer import WorldTokenizer


def data_cfg(root: Path, tmp_path: Path, **extra) -> OmegaConf:
    folder._prepared.cache_clear()  # each test draws its own split
    defaults = OmegaConf.load(REPO / "conf/data/folder.yaml")  # data=folder's own defaults, as the stages compose them
    return OmegaConf.merge(defaults, {"root": str(root), "split_file": str(tmp_path / "split.json"), "heldout_fraction": 0.25, **extra})


@pytest.fixture
def small(tmp_path) -> Path:
    return render(tmp_path / "data", {"train": 8, "test": 2, "inverted": 2}, classes=CLASSES[:3])


def test_sets_roles_and_names_come_from_the_folders(small, tmp_path):
    cfg = data_cfg(small, tmp_path)
    assert datasets.set_names(cfg) == [("heldout", "heldout"), ("test", "id"), ("inverted", "shift")]
    info = datasets.class_info(cfg)
    assert info.classnames == ["one", "two", "zero"]  # sorted folder names
    assert list(info.templates) == list(folder.DEFAULT_TEMPLATES)
    sizes = {s.name: len(s.dataset) for s in datasets.eval_sets(cfg, None)}
    assert sizes == {"heldout": 6, "test": 6, "inverted": 6}  # 25% of 8 per class = 2, of 3 classes


def test_the_held_out_split_is_seeded_saved_recorded_and_never_trained_on(small, tmp_path):
    cfg = data_cfg(small, tmp_path)
    train = {path for path, _ in datasets.train_set(cfg, None).samples}
    (heldout,) = datasets.eval_sets(cfg, None, ["heldout"])
    held = {path for path, _ in heldout.dataset.samples}
    assert len(train) == 18 and len(held) == 6 and not train & held
    assert sorted(label for _, label in heldout.dataset.samples) == [0, 0, 1, 1, 2, 2]
    saved = json.loads((tmp_path / "split.json").read_text())
    assert sorted(str(small / p) for p in saved["heldout_files"]) == sorted(held)
    # the record's provenance names the draw and hashes the mask, as the ImageNet suite does
    mask = np.array([p in held for p, _ in folder.scan(small).files["train"]])
    assert heldout.provenance == {"split": "seeded:0", "split_sha256": datasets.imagenet_split.mask_sha256(mask)}
    # another process reads the saved split; another seed draws another one (into another file)
    assert {p for p, _ in datasets.eval_sets(data_cfg(small, tmp_path), None, ["heldout"])[0].dataset.samples} == held
    other = datasets.eval_sets(data_cfg(small, tmp_path / "b", heldout_seed=1), None, ["heldout"])[0]
    assert {p for p, _ in other.dataset.samples} != held


def test_a_changed_folder_is_refused_once_a_split_is_saved(small, tmp_path):
    datasets.train_set(data_cfg(small, tmp_path), None)
    (small / "train/one/000.png").rename(small / "train/one/zzz.png")
    with pytest.raises(UserError, match="split_file.*another file listing"):
        datasets.train_set(data_cfg(small, tmp_path), None)


def test_a_val_folder_serves_as_the_held_out_set(small, tmp_path):
    render(small, {"val": 3}, classes=CLASSES[:3], seed=5)
    cfg = data_cfg(small, tmp_path)
    assert [name for name, _ in datasets.set_names(cfg)] == ["heldout", "test", "inverted"]
    (heldout,) = datasets.eval_sets(cfg, None, ["heldout"])
    assert heldout.provenance == {"split": "folder:val"} and len(heldout.dataset) == 9
    assert len(datasets.train_set(cfg, None)) == 24  # all of train/
    assert json.loads((tmp_path / "split.json").read_text())["split"] == "folder:val"


def test_classnames_and_templates_files(small, tmp_path):
    (small / "classnames.txt").write_text("digit one\ndigit two\ndigit zero\n")
    (small / "templates.txt").write_text("a sketch of the {}.\n")
    info = datasets.class_info(data_cfg(small, tmp_path))
    assert info.classnames == ["digit one", "digit two", "digit zero"] and info.templates == ["a sketch of the {}."]
    (small / "classnames.txt").write_text("one\ntwo\n")
    with pytest.raises(UserError, match="classnames.txt: 2 names for 3 class folders"):
        datasets.class_info(data_cfg(small, tmp_path))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: __import__("shutil").rmtree(r / "inverted/two"), "class folder inverted/two is missing"),
        (lambda r: [p.unlink() for p in (r / "test/zero").iterdir()], "test/zero holds no images"),
        (lambda r: (r / "train/one/007.png").write_bytes(b"not a png"), "unreadable image .*train/one/007.png"),
        (lambda r: (r / "test").rename(r / "elsewhere"), "no test/ \\(or val/\\) folder"),
    ],
)
def test_bad_layouts_are_one_clear_error_and_nothing_is_written(small, tmp_path, damage, message):
    damage(small)
    with pytest.raises(UserError, match=message):
        datasets.train_set(data_cfg(small, tmp_path), None)
    assert not (tmp_path / "split.json").exists()


def test_class_names_outside_the_tiny_clips_vocabulary_are_named():
    check_prompt_words(WorldTokenizer(), ["seven", "eight"], ["a photo of a {}."])
    with pytest.raises(UserError, match="class name 'golden retriever': 'golden', 'retriever' not in the tiny CLIP's vocabulary"):
        check_prompt_words(WorldTokenizer(), ["seven", "golden retriever"], ["a photo of a {}."])
    with pytest.raises(UserError, match="template 'a blurry photo of a {}.': 'blurry'"):
        check_prompt_words(WorldTokenizer(), ["seven"], ["a blurry photo of a {}."])


def broken_folder(folder: Path) -> list[str]:
    """The small folder with one unreadable image, written before the command's early start."""
    data = render(folder / "data", {"train": 8, "test": 2, "inverted": 2}, classes=CLASSES[:3])
    (data / "train/zero/003.png").write_bytes(b"\x89PNG broken")
    return [f"data.root={data}"]


@pytest.mark.early("pipeline", "folder", prepare=broken_folder)  # the real `python -m pipeline`, started with the session
def test_the_pipeline_refuses_a_bad_layout_in_one_line_and_writes_nothing(early):
    (result,) = early.wait()
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    image = early.folder / "data/train/zero/003.png"
    assert line.startswith(f"error: data.root: unreadable image {image} (UnidentifiedImageError"), line
    assert not (early.folder / "runs").exists()


def permuted(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same function with the hidden channels of every bottleneck block shuffled (conv1/bn1 → conv2 and
    conv2/bn2 → conv3): as accurate as the original, but in another basin, like a model trained from another init."""
    state = dict(state)
    generator = torch.Generator().manual_seed(seed)
    blocks = sorted({k.rsplit(".", 2)[0] for k in state if ".layer" in k and k.endswith("conv1.weight")})
    for block in blocks:
        for conv, bn, following in (("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")):
            order = torch.randperm(state[f"{block}.{conv}.weight"].shape[0], generator=generator)
            state[f"{block}.{conv}.weight"] = state[f"{block}.{conv}.weight"][order]
            for part in ("weight", "bias", "running_mean", "running_var"):
                state[f"{block}.{bn}.{part}"] = state[f"{block}.{bn}.{part}"][order]
            state[f"{block}.{following}.weight"] = state[f"{block}.{following}.weight"][:, order]
    return state


FOLDER_COMMON = ["data.heldout_per_class=4", "finetune.batch_size=16"]


def digits_folder(folder: Path) -> list[str]:
    """The folder pipeline's input, written before its early start: 10 digit classes, 12 + 4 + 4 images each."""
    return [f"data.root={render(folder / 'digits', {'train': 12, 'test': 4, 'inverted': 4})}", *FOLDER_COMMON, "sweep.n=2"]


@pytest.mark.slow
@pytest.mark.early("pipeline", "folder", prepare=digits_folder)  # the real `python -m pipeline`, started with the session
def test_the_whole_pipeline_on_a_folder_dataset_and_the_basin_check(early, tmp_path):
    env = early_env(early.folder)
    common = [f"data.root={early.folder / 'digits'}", *FOLDER_COMMON]
    (result,) = early.wait()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    base = early.folder / "runs" / "folder"

    with open(base / "plots/plots/main_table.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    for method in (
        "zeroshot",
        "lp_init",
        "best_individual",
        "uniform_soup",
        "greedy_soup",
        "learned_soup",
        "ensemble",
        "wise_ft",
        "model_stock",
    ):
        assert method in rows, sorted(rows)
    assert set(rows["uniform_soup"]) >= {"heldout", "id", "inverted", "avg_shifts"}
    assert float(rows["zeroshot"]["id"]) > 100 / len(CLASSES) + 20  # the tiny CLIP reads these digits zero-shot
    assert (base / "plots/plots/fig1_accuracy_vs_robustness.png").exists()
    records = [json.loads(line) for p in base.rglob("results.jsonl") for line in p.read_text().splitlines()]
    held = [r for r in records if r["role"] == "heldout"]
    assert held and all(r["split"] == "seeded:0" and r["split_sha256"] for r in held)

    # The basin check: the LP init and the fine-tunes from it share a basin; add copies of two of them whose
    # hidden channels are permuted (as if trained from another init) and it finds two basins and says why.
    lp, fine = base / "inits/lp/model.safetensors", base / "finetune/model_0/model.safetensors"
    report = json.loads((base / "soups/diagnose/basin.json").read_text())  # the pipeline's last step
    assert "share one basin" in report["verdict"][0], report["verdict"]
    assert len(report["basins"]) == 1
    assert [p["angle"] is None for p in report["pairs"]] == [True, True, False]  # the LP init is θ0: it has no update
    other = tmp_path / "other_init"
    copies = []
    for path in (lp, fine):
        state, meta = load_checkpoint(path)
        meta.hparams = {**meta.hparams, "lp_init_from": str(other / "lp/model.safetensors")} if meta.kind != "lp" else meta.hparams
        copy = other / path.parent.name / "model.safetensors"
        save_checkpoint(copy, permuted(state, 0), meta)
        copies.append(copy)
    bad = run_in_process(
        "soups", "diagnose", "experiment=folder", *common, f"ingredients=[{lp},{fine},{copies[0]},{copies[1]}]", "run_name=bad", env=env
    )
    assert bad.returncode == 0, bad.stderr[-2000:]
    report = json.loads((base / "soups/bad/basin.json").read_text())
    held = [i["heldout"] for i in report["ingredients"]]
    assert held[0] == held[2] and held[1] == held[3]  # a permuted copy is the same function
    names = [i["name"] for i in report["ingredients"]]
    assert sorted(sorted(names.index(n) for n in basin) for basin in report["basins"]) == [[0, 1], [2, 3]]  # originals | copies
    assert "different initialisations" in bad.stdout and "leave the shared basin" in bad.stdout, bad.stdout
    assert (base / "soups/bad/basin.png").exists()


def test_the_folder_experiment_needs_a_root_and_passes_overrides_to_every_stage():
    result = run_in_process("pipeline", "folder")
    assert result.returncode == 2 and result.stderr.strip() == "error: the folder experiment needs data.root=ROOT (your dataset's folder)"
    listed = run_in_process("pipeline", "folder", "--print", "data.root=/data/mine", "name=mine", "model=vit_b32", "sweep=paper_random")
    commands = [line for line in listed.stdout.splitlines() if line.startswith("python")]
    assert len(commands) == 10 and all("data.root=/data/mine" in c and "model=vit_b32" in c and "name=mine" in c for c in commands)
    assert [c for c in commands if "sweep=" in c] == [commands[2]] and "sweep=paper_random" in commands[2]
    assert "runs/mine/finetune" in commands[3]


def write_grey_16_bit(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit greyscale PNG (Pillow opens it as mode I;16)."""
    Image.fromarray(pixels.astype(np.uint16)).save(path)


def test_16_bit_pngs_score_what_their_8_bit_copies_score(tmp_path):
    """A folder of 16-bit grey PNGs (each 8-bit value v stored as v·257, as image tools widen it) is the same
    data as its 8-bit copy: same pixels decoded, same zero-shot scores. Pillow's convert("RGB") clips them white."""
    rgb = render(tmp_path / "rgb", {"train": 2, "test": 5}, classes=CLASSES[:4])
    for bits in (8, 16):
        for source in rgb.rglob("*.png"):
            target = tmp_path / f"grey{bits}" / source.relative_to(rgb)
            target.parent.mkdir(parents=True, exist_ok=True)
            grey = np.asarray(Image.open(source).convert("L"))
            Image.fromarray(grey).save(target) if bits == 8 else write_grey_16_bit(target, grey.astype(np.uint16) * 257)
    sample = next((tmp_path / "grey16").rglob("*.png"))
    assert Image.open(sample).mode == "I;16"
    eight = np.asarray(load_rgb(str(tmp_path / "grey8" / sample.relative_to(tmp_path / "grey16"))))
    assert np.array_equal(np.asarray(load_rgb(str(sample))), eight) and eight.min() < 100  # dark ink, not clipped white

    runs = tmp_path / "runs"
    env = {"MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["data=folder", "data.heldout_per_class=1", "device=cpu"]
    init = run_in_process(
        "finetune",
        *common,
        f"data.root={tmp_path / 'grey8'}",
        "finetune.epochs=0",
        "finetune.batch_size=4",
        "finetune.init=zeroshot",
        "run_name=zs",
        env=env,
    )
    assert init.returncode == 0, init.stderr[-2000:]
    checkpoint = next(runs.rglob("zs/model.safetensors"))
    top1 = {}
    for bits in (8, 16):
        root = tmp_path / f"grey{bits}"
        result = run_in_process(
            "eval",
            *common,
            f"data.root={root}",
            f"data.split_file={root}/split.json",
            f"checkpoints=[{checkpoint}]",
            f"run_name=grey{bits}",
            env=env,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in next(runs.rglob(f"grey{bits}/results.jsonl")).read_text().splitlines()]
        top1[bits] = {r["dataset"]: r["top1"] for r in records}
    assert top1[16] == top1[8]
    assert top1[8]["test"] > 0.25 + 0.2  # the tiny CLIP reads grey digits: a blank folder would score chance


def test_32_bit_tiffs_keep_their_high_byte_and_float_pixels_are_refused(tmp_path):
    values = np.array([[0, 1 << 24, 100 << 24, (127 << 24) + 5]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i32.tif")
    Image.fromarray((values >> 24).astype(np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(load_rgb(str(tmp_path / "i32.tif")))[0, :, 0].tolist() == [0, 1, 100, 127]
    with pytest.raises(ValueError, match="mode F"):
        load_rgb(str(tmp_path / "f.tif"))
