"""Beyond one task: zero-shot heads for any checkpoint on any dataset (eval.head), soups across tasks, world tasks,
and the transfer table (plots/transfer.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_in_process
from folder_dataset import render
from omegaconf import OmegaConf
from safetensors.torch import load_file

import datasets
from datasets import world
from datasets.world.sets import WorldArrays
from models.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from models.classifier import classifier_from_clip, zeroshot_head_weight
from models.errors import UserError
from models.factory import activation_of, create_clip
from models.heads import head_for
from models.logits import save_logits
from models.results import make_record
from pipeline.steps import experiment_steps
from plots import transfer
from soups import split_heads, task_arithmetic, uniform_soup
from soups.checks import IngredientSpec, check_across_tasks

FOUNDATION = REPO / "models/pretrained/tiny_clip_chars.safetensors"
OTHER_FOUNDATION = REPO / "models/pretrained/tiny_clip_world.safetensors"
ARCH = "TinyCLIP-Chars"


def world_cfg(tmp_path: Path, task: str | None) -> OmegaConf:
    cfg = OmegaConf.load(REPO / "conf/data/world.yaml")
    return OmegaConf.merge(cfg, {"root": str(tmp_path / "cache/world"), "scale": "small", "version": 5, "task": task})


def clip():
    return create_clip(ARCH, str(FOUNDATION))


def save(path: Path, state: dict, classes: str, pretrained: Path = FOUNDATION, kind: str = "individual") -> Path:
    visual = clip()[0].visual
    meta = CheckpointMeta(ARCH, str(pretrained), int(state["head.weight"].shape[0]), classes, kind, activation=activation_of(visual))
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "DONE").write_text("")
    return save_checkpoint(path, state, meta)


def character_world_zeroshot(path: Path, pretrained: Path = FOUNDATION) -> Path:
    """The 62-class zero-shot init of the character world, as the demo's inits step writes it."""
    model, _, tokenizer = clip()
    info = world.class_info(OmegaConf.create({"version": 5, "scale": "small", "seed": 0, "root": "unused", "task": None}))
    classifier = classifier_from_clip(model, zeroshot_head_weight(model, tokenizer, info.classnames, info.templates))
    return save(path, classifier.state_dict(), info.classes_id, pretrained, kind="zeroshot")


# --- eval.head=zeroshot -----------------------------------------------------------------------------------


def test_a_62_class_checkpoint_scores_a_10_class_digit_folder_with_a_zero_shot_head(tmp_path):
    """The issue's check: the character world's zero-shot init, scored on a folder of digits named zero..nine with a
    zero-shot head, scores exactly what the folder pipeline's own zero-shot init does (same logits), well above chance."""
    root = render(tmp_path / "digits", {"train": 8, "test": 6})
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache")}
    checkpoint = character_world_zeroshot(tmp_path / "world62/model.safetensors")
    common = ["experiment=folder", f"data.root={root}", "model=tiny_clip_chars", "name=digits"]  # as `python -m pipeline folder`
    logits = ["eval.save_logits=true", "eval.logits_dtype=float32"]
    # the folder pipeline's zero-shot row: its inits step, then its eval (own head)
    done = run_in_process("finetune", *common, "finetune.epochs=0", "finetune.init=zeroshot", "run_name=zeroshot", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    folder_init = tmp_path / "runs/digits/finetune/zeroshot/model.safetensors"
    done = run_in_process("eval", *common, *logits, f"checkpoints={folder_init}", "run_name=own", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_in_process("eval", *common, *logits, f"checkpoints={checkpoint}", "eval.head=zeroshot", "run_name=zs", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    own = {r["dataset"]: r for r in map(json.loads, (tmp_path / "runs/digits/eval/own/results.jsonl").open())}
    zeroshot = {r["dataset"]: r for r in map(json.loads, (tmp_path / "runs/digits/eval/zs/results.jsonl").open())}
    assert set(zeroshot) == {"heldout", "test"}
    for name, record in zeroshot.items():
        assert record["top1"] == own[name]["top1"] and record["n"] == own[name]["n"]
        assert record["head"] == "zeroshot" and own[name]["head"] == "own"
        assert record["text_tower"]["pretrained"] == str(FOUNDATION) and record["classes"] == own[name]["classes"]
        ours = load_file(str(tmp_path / f"runs/digits/eval/zs/logits/world62/{name}.safetensors"))["logits"]
        theirs = load_file(str(tmp_path / f"runs/digits/eval/own/logits/zeroshot/{name}.safetensors"))["logits"]
        assert torch.allclose(ours, theirs, atol=1e-5)
    assert zeroshot["test"]["top1"] > 0.5  # chance is 0.1: the tiny CLIP reads these digits without a digit head


def test_checkpoints_of_one_foundation_share_one_zero_shot_head_pass(tmp_path, monkeypatch):
    """Scoring many checkpoints of one foundation with zero-shot heads runs the text tower once per class list."""
    import models.classifier
    import models.heads

    models.heads._zeroshot_weight.cache_clear()
    calls = []
    real = models.classifier.zeroshot_head_weight
    monkeypatch.setattr(models.classifier, "zeroshot_head_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    paths = [character_world_zeroshot(tmp_path / f"world62_{i}/model.safetensors") for i in range(3)]
    info = datasets.ClassInfo(["zero", "one", "two"], ("a photo of a {}.",), "digits3")
    heads = [head_for(read_meta(p), info, "zeroshot", p) for p in paths]
    assert len(calls) == 1
    clip, _, tokenizer = create_clip(ARCH, str(FOUNDATION))
    expected = real(clip, tokenizer, ["zero", "one", "two"], ("a photo of a {}.",))
    assert all(torch.equal(weight, expected) and not bias.any() for weight, bias, _ in heads)
    heads[0][0].zero_()  # a caller that changes its head (a soup's state dict) changes no other caller's
    assert torch.equal(heads[1][0], expected) and torch.equal(head_for(read_meta(paths[2]), info, "zeroshot", paths[2])[0], expected)


def test_without_its_text_tower_a_zero_shot_head_is_refused_in_one_line(tmp_path):
    root = render(tmp_path / "digits", {"train": 2, "test": 1}, classes=("zero", "one"))
    gone = tmp_path / "moved/tiny_clip_chars.safetensors"
    checkpoint = character_world_zeroshot(tmp_path / "world62/model.safetensors", pretrained=gone)
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache")}
    done = run_in_process("eval", "data=folder", f"data.root={root}", f"checkpoints={checkpoint}", "eval.head=zeroshot", "name=x", env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
    assert str(gone) in lines[0] and "model.pretrained=" in lines[0]
    assert not (tmp_path / "runs/x/eval/eval/results.jsonl").exists() and not (tmp_path / "runs/x/eval/eval/DONE").exists()
    # its own head on a dataset of other classes is refused as before, and the line names the way out
    done = run_in_process("eval", "data=folder", f"data.root={root}", f"checkpoints={checkpoint}", "name=y", env=env)
    assert done.returncode == 2 and "eval.head=zeroshot" in done.stderr


def test_on_the_imagenet_suite_a_zero_shot_head_scores_what_the_zero_shot_init_does(tmp_path, monkeypatch):
    """Another checkpoint of the foundation (a 10-class head) scored on ImageNet and ImageNet-R (1000 logits projected
    to R's 200) with eval.head=zeroshot: the zero-shot init's own logits, set by set."""
    import open_clip

    from datasets.imagenet_miniature import make_miniature, register_tiny_vit
    from eval.runner import evaluate_checkpoints
    from models.schemas import EvalOptions

    monkeypatch.setattr(open_clip, "OPENAI_IMAGENET_TEMPLATES", open_clip.OPENAI_IMAGENET_TEMPLATES[:1])  # 1,000 prompts, not 80,000
    arch = register_tiny_vit()
    mini = make_miniature(tmp_path / "data", sets=("val", "ImageNetR"), size=8)
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(arch)
    foundation = tmp_path / "foundation.pt"
    torch.save(model.eval().state_dict(), foundation)
    head = zeroshot_head_weight(
        model, open_clip.get_tokenizer(arch), list(open_clip.IMAGENET_CLASSNAMES), open_clip.OPENAI_IMAGENET_TEMPLATES
    )
    init = save_checkpoint(
        tmp_path / "zeroshot/model.safetensors",
        classifier_from_clip(model, head).state_dict(),
        CheckpointMeta(arch, str(foundation), 1000, "imagenet1k", "zeroshot"),
    )
    other = save_checkpoint(
        tmp_path / "other/model.safetensors",
        classifier_from_clip(model, torch.randn(10, head.shape[1])).state_dict(),
        CheckpointMeta(arch, str(foundation), 10, "folder:ten", "individual"),
    )
    data_cfg = OmegaConf.create(
        {"name": "imagenet", "root": str(mini.root), "heldout": "ImageNet2p", "id": "ImageNet", "shifts": ["ImageNetR"]}
    )
    options = {"sets": ["ImageNet", "ImageNetR"], "amp": False, "save_logits": True, "logits_dtype": "float32", "workers": 0}
    cpu = torch.device("cpu")
    evaluate_checkpoints([str(init)], data_cfg, OmegaConf.structured(EvalOptions(**options)), tmp_path / "own", cpu)
    records = evaluate_checkpoints(
        [str(other)], data_cfg, OmegaConf.structured(EvalOptions(head="zeroshot", **options)), tmp_path / "zs", cpu
    )
    assert {r["dataset"]: r["head"] for r in records} == {"ImageNet": "zeroshot", "ImageNetR": "zeroshot"}
    for name in ("ImageNet", "ImageNetR"):
        ours = load_file(str(tmp_path / f"zs/logits/other/{name}.safetensors"))
        theirs = load_file(str(tmp_path / f"own/logits/zeroshot/{name}.safetensors"))
        assert ours["logits"].shape == theirs["logits"].shape and torch.allclose(ours["logits"], theirs["logits"], atol=1e-5)


# --- the world's tasks ------------------------------------------------------------------------------------


def test_a_task_keeps_its_classes_images_relabelled_in_order():
    arrays = WorldArrays(np.arange(5).reshape(5, 1, 1, 1).astype(np.uint8), np.array([0, 5, 3, 5, 9]), list("abcde"))
    subset = world.task_subset(arrays, [3, 5])
    assert subset.labels.tolist() == [1, 0, 1] and subset.images.ravel().tolist() == [1, 2, 3] and subset.captions == ["b", "c", "d"]


def test_the_tasks_partition_the_character_world_and_unknown_ones_are_refused(tmp_path):
    infos = {task: datasets.class_info(world_cfg(tmp_path, task)) for task in world.TASKS}
    every = datasets.class_info(world_cfg(tmp_path, None)).classnames
    assert sorted(n for info in infos.values() for n in info.classnames) == sorted(every)  # each class in one task
    assert infos["digits"].classnames[:2] == ["zero", "one"] and infos["digits"].classes_id == "world-v5:digits"
    assert infos["letters_nz"].classnames[0] == "upper november" and len(infos["letters_nz"].classnames) == 26
    with pytest.raises(UserError, match="data.task: unknown task 'vowels'"):
        datasets.class_info(world_cfg(tmp_path, "vowels"))


def test_a_public_dataset_not_fetched_is_one_line_naming_what_to_fetch(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf/data/clip_benchmark.yaml"), {"dataset": "flowers", "root": str(tmp_path / "cb")})
    with pytest.raises(UserError) as refused:
        datasets.class_info(cfg)
    message = str(refused.value)
    assert "\n" not in message and f"not under {tmp_path / 'cb'}" in message
    assert f"build_dataset as b; [b('flowers', root='{tmp_path / 'cb'}', split=s) for s in ('train', 'test')]" in message


# --- soups across tasks -----------------------------------------------------------------------------------


def fine_tunes(tmp_path: Path) -> tuple[dict, dict[str, dict]]:
    """θ0 (the foundation's image tower) and three 'fine-tunes' of it: two on digits, one on upper_am."""
    torch.manual_seed(0)
    tower = {f"visual.{k}": v for k, v in clip()[0].visual.state_dict().items()}
    states = {}
    for name, rows in (("digits_a", 10), ("upper_b", 13), ("digits_c", 10)):
        state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in tower.items()}
        states[name] = {**state, "head.weight": torch.randn(rows, 64), "head.bias": torch.randn(rows)}
        classes = "world-v5:digits" if name.startswith("digits") else "world-v5:upper_am"
        save(tmp_path / f"runs/t/finetune/{name}/model.safetensors", states[name], classes)
    init = {**tower, "head.weight": torch.randn(62, 64), "head.bias": torch.zeros(62)}
    save(tmp_path / "init/model.safetensors", init, "world-v5", kind="zeroshot")
    return init, states


def test_soups_across_tasks_average_the_image_tower_and_keep_each_tasks_head(tmp_path):
    init, states = fine_tunes(tmp_path)
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache")}
    common = ["model=tiny_clip_chars", "data.version=5", "data.scale=small", "name=t", "soup.across_tasks=true", "soup.evaluate=false"]
    common += [f"ingredients={tmp_path}/runs/t/finetune", f"soup.init={tmp_path}/init/model.safetensors"]
    done = run_in_process("soups", *common, "soup=uniform", "data.task=digits", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_in_process("soups", *common, "soup=task_arithmetic", "soup.scaling=0.5", "data.task=upper_am", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    uniform = load_file(str(tmp_path / "runs/t/soups/uniform_soup/model.safetensors"))
    arithmetic = load_file(str(tmp_path / "runs/t/soups/task_arithmetic/model.safetensors"))
    a, b, c = states["digits_a"], states["upper_b"], states["digits_c"]
    for key in (k for k in a if k.startswith("visual.") and a[k].is_floating_point()):
        assert torch.allclose(uniform[key], (a[key] + b[key] + c[key]) / 3, atol=1e-6)  # the tower: averaged
        # one task vector per task: the digits one is the mean of its two fine-tunes' (Ilharco et al.'s τ_t)
        by_hand = init[key] + 0.5 * (((a[key] + c[key]) / 2 - init[key]) + (b[key] - init[key]))
        assert torch.allclose(arithmetic[key], by_hand, atol=1e-5)
    # heads: never averaged across tasks; the digits head is the mean of the two digits fine-tunes' heads
    assert torch.allclose(uniform["head.weight"], (a["head.weight"] + c["head.weight"]) / 2) and uniform["head.weight"].shape == (10, 64)
    assert torch.equal(arithmetic["head.weight"], b["head.weight"]) and torch.equal(arithmetic["head.bias"], b["head.bias"])
    meta = read_meta(tmp_path / "runs/t/soups/uniform_soup/model.safetensors")
    assert meta.classes == "world-v5:digits" and meta.hparams["head"]["head"] == "ingredient"
    assert {k: len(v) for k, v in meta.hparams["task_heads"].items()} == {"world-v5:digits": 2, "world-v5:upper_am": 1}
    # eval.head=auto finds each task's own head in the soup, a zero-shot head where it has none
    upper = head_for(meta, datasets.class_info(world_cfg(tmp_path, "upper_am")), "auto", "soup")
    assert torch.equal(upper[0], b["head.weight"]) and upper[2]["head"] == "ingredient"
    letters = head_for(meta, datasets.class_info(world_cfg(tmp_path, "letters_nz")), "auto", "soup")
    assert letters[0].shape == (26, 64) and letters[2]["head"] == "zeroshot"
    # the greedy soup's heads come from the ingredients it keeps, and it is selected with the stage's task's head
    done = run_in_process("soups", *common[:-1], "soup=greedy", "data.task=lower_am", "eval.sets=heldout", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    trajectory = [json.loads(line) for line in (tmp_path / "runs/t/soups/greedy_soup/greedy_trajectory.jsonl").open()]
    kept = sorted(step["ingredient"] for step in trajectory if step["accepted"])
    assert 0 < len(kept) < len(trajectory)  # it kept some, not all: the heads of the others are left out
    greedy = read_meta(tmp_path / "runs/t/soups/greedy_soup/model.safetensors")
    assert sorted(e["path"] for entries in greedy.hparams["task_heads"].values() for e in entries) == kept
    assert greedy.classes == "world-v5:lower_am" and greedy.hparams["head"]["head"] == "zeroshot"  # no lower_am ingredient


def test_a_soup_of_two_foundations_is_refused_in_one_line(tmp_path):
    _, states = fine_tunes(tmp_path)
    save(tmp_path / "runs/t/finetune/other/model.safetensors", states["digits_a"], "world-v5:lower_am", pretrained=OTHER_FOUNDATION)
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache")}
    args = ["model=tiny_clip_chars", "data.version=5", "data.scale=small", "data.task=digits", "name=t"]
    done = run_in_process("soups", *args, "soup=uniform", "soup.across_tasks=true", f"ingredients={tmp_path}/runs/t/finetune", env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "foundation" in lines[0] and "other" in lines[0]
    assert not (tmp_path / "runs/t/soups/uniform_soup/model.safetensors").exists()
    # without soup.across_tasks, different heads are refused as before, and the line says how to soup them
    pair = f"ingredients=[{tmp_path}/runs/t/finetune/digits_a,{tmp_path}/runs/t/finetune/upper_b]"
    done = run_in_process("soups", *args, "soup=uniform", pair, "run_name=one_task", env=env)
    assert done.returncode == 2 and "soup.across_tasks=true" in done.stderr
    done = run_in_process("soups", *args, "soup=learned", "soup.across_tasks=true", "run_name=learned", pair, env=env)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: soup.across_tasks: learned does not soup across tasks; use one of greedy, model_stock, task_arithmetic, uniform"
    )


def test_image_towers_of_two_architectures_are_refused_in_one_line():
    tower = {"visual.w": ((4, 4), "torch.float32"), "head.weight": ((10, 4), "torch.float32")}
    other = {"visual.w": ((4, 8), "torch.float32"), "head.weight": ((13, 8), "torch.float32")}
    specs = [IngredientSpec("a", "X", 10, "t1", tower, pretrained="f"), IngredientSpec("b", "X", 13, "t2", other, pretrained="f")]
    with pytest.raises(UserError, match=r"^b: key 'visual.w' has shape \[4, 8\], a has \[4, 4\]$"):
        check_across_tasks(specs)
    check_across_tasks([specs[0], IngredientSpec("b", "X", 13, "t2", {**tower, "head.weight": ((13, 4), "torch.float32")}, pretrained="f")])


def test_the_library_soups_towers_of_different_tasks_and_adds_task_vectors():
    a = {"visual.w": torch.tensor([1.0, 2.0]), "head.weight": torch.ones(2, 2)}
    b = {"visual.w": torch.tensor([3.0, 6.0]), "head.weight": torch.zeros(5, 2)}
    towers, heads = split_heads([a, b])
    assert uniform_soup(towers)["visual.w"].tolist() == [2.0, 4.0]
    assert heads[0]["head.weight"] is a["head.weight"] and heads[1]["head.weight"].shape == (5, 2)  # untouched
    theta0 = {"visual.w": torch.tensor([1.0, 1.0])}
    # θ0 + λ Σ (θi − θ0) = [1, 1] + 0.25 · ([0, 1] + [2, 5]) = [1.5, 2.5]
    assert task_arithmetic(theta0, towers, 0.25)["visual.w"].tolist() == [1.5, 2.5]
    with pytest.raises(UserError, match="ingredient 1: lacks key 'visual.v'"):
        split_heads([{**a, "visual.v": torch.zeros(1)}, b])


def test_the_library_refuses_files_of_two_foundations(tmp_path):
    state = {"visual.w": torch.zeros(2), "head.weight": torch.zeros(3, 2), "head.bias": torch.zeros(3)}
    paths = []
    for name, foundation in (("a", "foundation_1.safetensors"), ("b", "foundation_2.safetensors")):
        meta = CheckpointMeta("X", foundation, 3, name, "individual")
        paths.append(save_checkpoint(tmp_path / f"{name}.safetensors", state, meta))
    with pytest.raises(UserError, match="fine-tuned from foundation 'foundation_2.safetensors'"):
        split_heads(paths)


# --- the experiment and its table -------------------------------------------------------------------------


def test_the_transfer_pipeline_fine_tunes_three_tasks_and_soups_them_on_the_unseen_one():
    steps = {step.name: step.argv for step in experiment_steps("transfer")}
    sweeps = [argv for name, argv in steps.items() if name.startswith("fine-tuning sweep")]
    assert sorted(a for argv in sweeps for a in argv if a.startswith("data.task=")) == [
        f"data.task={t}" for t in ("digits", "lower_am", "upper_am")
    ]
    (soups,) = [argv for argv in steps.values() if argv[2] == "soups"]
    assert "soup.across_tasks=true" in soups and "data.task=letters_nz" in soups
    evals = [argv for argv in steps.values() if argv[2] == "eval"]
    assert sorted(a for argv in evals for a in argv if a.startswith("data.task=")) == sorted(f"data.task={t}" for t in world.TASKS)


def records(rows: dict[str, tuple[str, dict[str, tuple[str, float, float]]]]) -> pd.DataFrame:
    """model_id -> (kind, {task: (head, held-out, test)}), 100 images per set."""
    out = []
    for model_id, (kind, tasks) in rows.items():
        for task, (head, heldout, test) in tasks.items():
            for dataset, role, top1 in (("heldout", "heldout", heldout), ("photo", "id", test)):
                extra = {"head": head, "classes": f"world-v5:{task}"}
                out.append(make_record(model_id=model_id, kind=kind, dataset=dataset, role=role, correct=round(top1 * 100), n=100, **extra))
    return pd.DataFrame(out)


def test_the_transfer_table_picks_each_tasks_best_by_its_own_held_out_accuracy():
    table_records = records(
        {
            "inits/zs": ("zeroshot", {"digits": ("own", 0.5, 0.5), "letters_nz": ("zeroshot", 0.5, 0.5)}),
            "finetune/digits/model_0": ("individual", {"digits": ("own", 0.8, 0.7), "letters_nz": ("zeroshot", 0.4, 0.45)}),
            "finetune/digits/model_1": ("individual", {"digits": ("own", 0.9, 0.6), "letters_nz": ("zeroshot", 0.3, 0.35)}),
            "soups/uniform_soup": ("soup", {"digits": ("ingredient", 0.7, 0.75), "letters_nz": ("zeroshot", 0.6, 0.55)}),
        }
    )
    rows = transfer.row_models(table_records, "letters_nz")
    assert rows["own_best"] == {"digits": "finetune/digits/model_1"} and rows["best_individual"]["letters_nz"] == "finetune/digits/model_1"
    table = transfer.transfer_table(table_records, rows, ["digits", "letters_nz"], ["digits"])
    assert table.loc["zeroshot", "digits"] == 50.0 and table.loc["best_digits", "digits"] == 60.0
    assert table.loc["best_digits", "letters_nz"] == 35.0 and table.loc["uniform_soup", "letters_nz"] == 55.0
    assert table.loc["uniform_soup", "seen_avg"] == 75.0
    assert table.loc["zeroshot", "digits_ci95"] == pytest.approx(100 * 1.96 * np.sqrt(0.25 / 100), abs=0.01)  # normal approximation


def test_a_transfer_finding_is_the_paired_difference_of_two_rows(tmp_path):
    labels = torch.arange(200) % 4
    right = torch.nn.functional.one_hot(labels, 4).float()
    half = torch.where((torch.arange(200) % 2 == 0)[:, None], right, right.roll(1, dims=1))  # right on every other image
    save_logits(tmp_path / "eval/on_letters_nz", "soups/greedy_soup", "photo", right, labels)
    save_logits(tmp_path / "eval/on_letters_nz", "finetune/digits/model_1", "photo", half, labels)
    rows = {"greedy_soup": {"letters_nz": "soups/greedy_soup"}, "best_individual": {"letters_nz": "finetune/digits/model_1"}}
    found = transfer.measure(transfer.FINDINGS[0], tmp_path, rows, ["letters_nz"])
    assert (found["a_value"], found["b_value"], found["delta_pp"]) == (100.0, 50.0, 50.0)
    assert found["ci95"][0] > 0 and found["holds"]
