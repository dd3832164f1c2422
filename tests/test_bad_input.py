"""Every bad input a user can hand a stage: one line on stderr, exit code 2, no traceback, nothing left behind.

Table-driven: each case is a stage, its command-line overrides (files crafted in `crafted`) and a phrase
the one line must hold. After the run, no results record, checkpoint or DONE may exist under the runs folder
(for a refused rerun: the finished folder is byte-for-byte as it was).

Most cases run the stage's `main()` in this process (`run_in_process`: the same entry, without a new
interpreter's imports); the cases in `AS_COMMAND` run the real `python -m <stage>` command, started with the
session beside the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import run_in_process

from datasets.imagenet_miniature import make_miniature
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.classifier import classifier_from_clip
from models.factory import create_clip


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def write_exploit(folder: Path) -> None:
    """code.pt: a pickle that runs `echo pwned` through os.system when unpickled."""
    with open(folder / "code.pt", "wb") as handle:
        pickle.dump({"model.visual.w": Exploit()}, handle)


def world_meta(num_classes: int = 10, arch: str = "TinyCLIP", classes: str = "world") -> CheckpointMeta:
    return CheckpointMeta(arch=arch, pretrained=None, num_classes=num_classes, classes=classes, kind="individual")


def perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    """The files the cases hand to the stages: good TinyCLIP ingredients and bad variants of them."""
    root = tmp_path_factory.mktemp("crafted")
    torch.manual_seed(0)
    clip_model, _, _ = create_clip("TinyCLIP", None)
    base = classifier_from_clip(clip_model, num_classes=10).state_dict()
    good = [perturbed(base, seed) for seed in (1, 2)]
    for i, state in enumerate(good):
        save_checkpoint(root / f"good{i}.safetensors", state, world_meta())

    def variant(name: str, change, meta: CheckpointMeta | None = None) -> None:
        state = {k: v.clone() for k, v in good[1].items()}
        change(state)
        save_checkpoint(root / name, state, meta or world_meta())

    float_key = "visual.conv1.weight"
    variant("other_arch.safetensors", lambda s: None, world_meta(arch="ViT-B-32"))
    variant("missing_key.safetensors", lambda s: s.pop(float_key))
    variant("half.safetensors", lambda s: s.__setitem__(float_key, s[float_key].half()))
    variant("nan.safetensors", lambda s: s[float_key].view(-1).__setitem__(0, float("nan")))
    variant("inf.safetensors", lambda s: s[float_key].view(-1).__setitem__(0, float("inf")))
    # An integer tensor where the model has a float one (BatchNorm counters may differ; they are not averaged).
    variant("int_buffer.safetensors", lambda s: s.__setitem__("head.bias", torch.arange(10)))
    variant(
        "eleven.safetensors",
        lambda s: s.update({"head.weight": torch.zeros(11, s["head.weight"].shape[1]), "head.bias": torch.zeros(11)}),
        world_meta(11),
    )
    # The metadata says 10 classes, the head has 12 rows (both ingredients, so they agree with each other).
    for i in range(2):
        state = dict(good[i], **{"head.weight": torch.zeros(12, good[i]["head.weight"].shape[1]), "head.bias": torch.zeros(12)})
        save_checkpoint(root / f"twelve_rows{i}.safetensors", state, world_meta())
    # Both lack the same key: they agree with each other, not with the architecture.
    for i in range(2):
        save_checkpoint(root / f"lacking{i}.safetensors", {k: v for k, v in good[i].items() if k != float_key}, world_meta())
    # Official-style .pt files whose shapes are not those of model.arch.
    for i in range(2):
        state = {f"model.{k}": v for k, v in good[i].items() if k.startswith("visual.")}
        state["model.visual.conv1.weight"] = torch.zeros(4, 3, 3, 3)
        state.update({"classification_head.weight": good[i]["head.weight"], "classification_head.bias": good[i]["head.bias"]})
        torch.save(state, root / f"wrong_shape{i}.pt")
    (root / "truncated.safetensors").write_bytes((root / "good1.safetensors").read_bytes()[:-100])
    shifted_offsets(root / "good1.safetensors", root / "shifted.safetensors", "head.weight", 4)
    write_exploit(root)
    torch.save({"model.visual.w": torch.nn.Linear(2, 2)}, root / "module.pt")
    # ImageNet-R with 199 of its 200 official class folders, and ImageNet-A with an empty class folder.
    mini = make_miniature(root / "imagenet", sets=("ImageNetR", "ImageNetA"), per_class=1, size=4)
    shutil.rmtree(sorted((mini.root / "imagenet-r").iterdir())[0])
    for image in sorted((mini.root / "imagenet-a").iterdir())[0].iterdir():
        image.unlink()
    imagenet_head = {"head.weight": torch.zeros(1000, base["head.weight"].shape[1]), "head.bias": torch.zeros(1000)}
    save_checkpoint(root / "imagenet.safetensors", dict(good[0], **imagenet_head), world_meta(1000, classes="imagenet1k"))
    return root


def shifted_offsets(source: Path, target: Path, key: str, shift: int) -> None:
    """A copy of a safetensors file whose `key` byte range is moved by `shift` bytes, all else intact: the
    ranges overlap their neighbours, which safetensors' own reader refuses ("invalid offset")."""
    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header[key]["data_offsets"] = [offset + shift for offset in header[key]["data_offsets"]]
    text = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    with pytest.raises(safetensors.SafetensorError, match="invalid offset"):
        safetensors.torch.load_file(target)


def pair(crafted: Path, second: str, first: str = "good0.safetensors") -> str:
    return f"ingredients=[{crafted / first},{crafted / second}]"


UNIFORM = ("soup=uniform", "soup.evaluate=false")
SMALL_FINETUNE = ("data.scale=small", "model.pretrained=null", "finetune.progress=false", "finetune.epochs=1")

# name: (stage, overrides given the crafted folder, phrase the one line must hold)
CASES = {
    "mismatched_arch": ("soups", lambda c: [pair(c, "other_arch.safetensors"), *UNIFORM], "architecture 'ViT-B-32' differs"),
    "missing_key": ("soups", lambda c: [pair(c, "missing_key.safetensors"), *UNIFORM], "lacks key 'visual.conv1.weight'"),
    "all_lack_a_key": (
        "soups",
        lambda c: [pair(c, "lacking1.safetensors", "lacking0.safetensors"), *UNIFORM],
        "for architecture 'TinyCLIP'",
    ),
    "wrong_shapes_for_arch": (
        "soups",
        lambda c: [pair(c, "wrong_shape1.pt", "wrong_shape0.pt"), "model=tiny_clip", *UNIFORM],
        "key 'visual.conv1.weight' has shape [4, 3, 3, 3], architecture 'TinyCLIP'",
    ),
    "dtype": ("soups", lambda c: [pair(c, "half.safetensors"), *UNIFORM], "has dtype torch.float16"),
    "truncated": ("soups", lambda c: [pair(c, "truncated.safetensors"), *UNIFORM], "truncated.safetensors"),
    "shifted_offsets": ("soups", lambda c: [pair(c, "shifted.safetensors"), *UNIFORM], "shifted.safetensors: unreadable checkpoint"),
    "shifted_offsets_eval": ("eval", lambda c: [f"checkpoints=[{c / 'shifted.safetensors'}]"], "tensor 'head.weight'"),
    "malicious_pickle": (
        "soups",
        lambda c: [f"ingredients=[{c / 'code.pt'}]", *UNIFORM],
        "code.pt: refused to unpickle: it needs the global posix.system",
    ),
    "pickled_module": ("soups", lambda c: [f"ingredients=[{c / 'module.pt'}]", *UNIFORM], "torch.nn.modules.linear.Linear"),
    "empty_set": ("soups", lambda c: ["ingredients=[]", *UNIFORM], "ingredient set is empty"),
    "nan": ("soups", lambda c: [pair(c, "nan.safetensors"), *UNIFORM], "nan.safetensors"),
    "inf": ("soups", lambda c: [pair(c, "inf.safetensors"), *UNIFORM], "inf.safetensors"),
    "nan_eval": (
        "eval",
        lambda c: [f"checkpoints=[{c / 'nan.safetensors'}]", "eval.sets=heldout"],
        "tensor 'visual.conv1.weight' holds NaN",
    ),
    "inf_eval": ("eval", lambda c: [f"checkpoints=[{c / 'inf.safetensors'}]", "eval.sets=heldout"], "inf.safetensors: tensor"),
    "int_buffer": ("soups", lambda c: [pair(c, "int_buffer.safetensors"), *UNIFORM], "key 'head.bias' has dtype torch.int64"),
    "class_count": ("soups", lambda c: [pair(c, "eleven.safetensors"), *UNIFORM], "mismatched class counts"),
    "class_count_vs_head": (
        "soups",
        lambda c: [pair(c, "twelve_rows1.safetensors", "twelve_rows0.safetensors"), *UNIFORM],
        "metadata says 10 classes but head.weight has 12 rows",
    ),
    "class_count_vs_head_eval": ("eval", lambda c: [f"checkpoints=[{c / 'twelve_rows0.safetensors'}]"], "head.weight has 12 rows"),
    "missing_path": ("soups", lambda c: [f"ingredients=[{c / 'nowhere.safetensors'}]", *UNIFORM], "nowhere.safetensors: no such file"),
    "empty_glob": ("soups", lambda c: [f"ingredients={c / 'none_*.safetensors'}", *UNIFORM], "matches no file"),
    "alpha_above_1": (
        "soups",
        lambda c: [f"ingredients=[{c / 'good0.safetensors'}]", "soup=wise_ft", f"++soup.init={c / 'good1.safetensors'}", "soup.alpha=1.5"],
        "soup.alpha must lie in [0, 1]",
    ),
    "alphas_below_0": (
        "soups",
        lambda c: [
            f"ingredients=[{c / 'good0.safetensors'}]",
            "soup=wise_ft",
            f"++soup.init={c / 'good1.safetensors'}",
            "soup.alphas=[-0.5,0.5]",
        ],
        "soup.alphas: every α must lie in [0, 1]",
    ),
    "alphas_empty": (
        "soups",
        lambda c: [f"ingredients=[{c / 'good0.safetensors'}]", "soup=wise_ft", f"++soup.init={c / 'good1.safetensors'}", "soup.alphas=[]"],
        "soup.alphas: the list is empty",
    ),
    "learned_zero_epochs": (
        "soups",
        lambda c: [pair(c, "good1.safetensors"), "soup=learned", "soup.epochs=0"],
        "soup.epochs must be >= 1 (with 0 the learned soup is the uniform soup",
    ),
    "batch_not_divisible": (
        "finetune",
        lambda c: [*SMALL_FINETUNE, "finetune.batch_size=100", "finetune.grad_accum=3"],
        "divisible by grad_accum x world size = 3 x 1",
    ),
    "imagenet_r_199_classes": (
        "eval",
        lambda c: ["data=imagenet", f"data.root={c / 'imagenet'}", "eval.sets=[ImageNetR]", f"checkpoints=[{c / 'imagenet.safetensors'}]"],
        "1 of the 200 official wnid folders are missing",
    ),
    "empty_class_folder": (
        "eval",
        lambda c: ["data=imagenet", f"data.root={c / 'imagenet'}", "eval.sets=[ImageNetA]", f"checkpoints=[{c / 'imagenet.safetensors'}]"],
        "no images in",
    ),
    "missing_dataset_folder": (
        "eval",
        lambda c: ["data=imagenet", f"data.root={c / 'nowhere'}", "eval.sets=[ImageNetR]", f"checkpoints=[{c / 'imagenet.safetensors'}]"],
        "missing folder",
    ),
}


# Cases run as the user runs them: the unpickling exploit, since only a real process shows that `os.system` never
# ran (its output goes to the file descriptor, not to sys.stdout), and one fine-tune. Eval's one line from a real
# process: tests/test_faults.py (a stop signal), which also covers soups.
AS_COMMAND = {"malicious_pickle", "batch_not_divisible"}


def as_command(case: str):
    """The case as its real `python -m` command, started with the session beside the suite (conftest's `early`),
    its inputs (code.pt) written in the command's own folder first."""
    stage, overrides, _ = CASES[case]

    def prepare(folder: Path) -> list[str]:
        write_exploit(folder)
        return [*overrides(folder), "device=cpu"]

    return pytest.param(case, marks=pytest.mark.early(stage, prepare=prepare))


def left_behind(runs: Path) -> list[str]:
    outputs = ("results.jsonl", "model.safetensors", "predictions.safetensors", "DONE")
    return sorted(str(p.relative_to(runs)) for p in runs.rglob("*") if p.name in outputs)


def assert_one_line_exit_2(result, phrase: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    assert "pwned" not in result.stdout


@pytest.mark.parametrize("case", [as_command(case) if case in AS_COMMAND else case for case in sorted(CASES)])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, request):
    stage, overrides, phrase = CASES[case]
    if case in AS_COMMAND:  # run last, with the early tests: this module's `crafted` is not built again for them
        early = request.getfixturevalue("early")
        (result,), runs = early.wait(), early.folder / "runs"
    else:
        runs = tmp_path / "runs"
        env = {"MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
        result = run_in_process(stage, *overrides(request.getfixturevalue("crafted")), "device=cpu", env=env)
    assert_one_line_exit_2(result, phrase)
    assert left_behind(runs) == []


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_with_another_config_is_refused_and_changes_nothing(crafted, tmp_path):
    env = {"MODEL_SOUPS_RUNS": str(tmp_path / "runs"), "MODEL_SOUPS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [pair(crafted, "good1.safetensors"), *UNIFORM, "device=cpu"]
    assert run_in_process("soups", *args, env=env).returncode == 0
    run_dir = tmp_path / "runs/default/soups/uniform_soup"
    before = tree_digest(run_dir)
    assert {"DONE", "model.safetensors", "run_config.json", ".hydra/config.yaml"} <= before.keys()
    result = run_in_process("soups", *args, "soup.accumulate=float64", env=env)
    assert_one_line_exit_2(result, "holds a finished run with a different config (soup.accumulate: 'float32' -> 'float64')")
    after = tree_digest(run_dir)
    after.pop("soups.log"), before.pop("soups.log")  # Hydra's job log notes each launch
    assert after == before
