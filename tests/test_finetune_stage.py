"""`python -m finetune` end to end on the small embedded world: outputs, resume after SIGKILL, DDP, bad input.

Every run has one thread, a random-init TinyCLIP and 2 short epochs; the runs a process of their own proves
something for (killed by SIGKILL, under torchrun, through submitit) are real `python -m` commands, the rest run
in this process.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import early_env, run_in_process
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

import datasets
from finetune import sweeps
from finetune.train import resolve_recipe
from models.checkpoint import read_meta
from models.cli import CONF_DIR
from models.errors import UserError
from models.results import read_records

# One recipe with every knob on: accumulation, smoothing, mixup, RandAugment, warmup, periodic saves.
RECIPE = [
    "data.scale=small",
    "model.pretrained=null",  # random init: these tests check mechanics, not accuracy
    "finetune.batch_size=100",
    "finetune.grad_accum=2",
    "finetune.epochs=2",
    "finetune.warmup_steps=3",
    "finetune.lr=1e-3",
    "finetune.label_smoothing=0.1",
    "finetune.mixup=0.4",
    "finetune.randaug=rand-m9-n2",
    "finetune.save_every_steps=3",
    "finetune.progress=false",
]
BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="session")  # session: the DDP test runs last, with the early tests, and reuses it
def world(tmp_path_factory) -> dict:
    """Cache and runs folders for this module, with the small world generated once."""
    base = tmp_path_factory.mktemp("finetune")
    env = {"MODEL_SOUPS_CACHE": str(base / "cache"), "MODEL_SOUPS_RUNS": str(base / "runs"), "OMP_NUM_THREADS": "1"}
    data_cfg = OmegaConf.create({"name": "world", "root": str(base / "cache" / "world"), "scale": "small", "seed": 0})
    datasets.train_set(data_cfg, None)  # generates and caches every set
    return {"env": env, "runs": base / "runs", "data_cfg": data_cfg}


def run_dir(world: dict, name: str) -> Path:
    return world["runs"] / name / "finetune" / "finetune"


def finetune(world: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m finetune` in this process (the stage's real command runs below: SIGKILL, torchrun, submitit)."""
    return run_in_process("finetune", f"name={name}", *args, env=world["env"])


@pytest.fixture(scope="session")
def reference(world) -> Path:
    """An uninterrupted 1-process run of RECIPE."""
    result = finetune(world, "reference", *RECIPE)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir(world, "reference")


def test_a_run_writes_checkpoint_metrics_and_heldout_record(reference):
    assert (reference / "DONE").exists() and not (reference / "train_state.pt").exists()
    meta = read_meta(reference / "model.safetensors")
    assert (meta.kind, meta.arch, meta.num_classes, meta.classes) == ("individual", "TinyCLIP", 10, "world")
    assert meta.hparams["init"] == "zeroshot" and meta.hparams["parent_pretrained"] is None
    assert meta.hparams["mixup"] == 0.4 and meta.hparams["randaug"] == "rand-m9-n2"
    metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1] and [m["step"] for m in metrics] == [10, 20]
    assert all(m["images_per_s"] > 0 and m["loss"] > 0 for m in metrics)
    assert metrics[1]["lr"] == pytest.approx(0.0, abs=1e-4)  # the cosine ends at 0
    assert (reference / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    (record,) = read_records(reference / "results.jsonl")
    assert (record["role"], record["dataset"], record["n"]) == ("heldout", "heldout", 200)
    assert record["checkpoint"]["sha256"] == hashlib.sha256((reference / "model.safetensors").read_bytes()).hexdigest()[:12]


KILLER = textwrap.dedent(
    """
    # Run the stage, but SIGKILL ourselves inside the forward/loss of micro-batch number KILL_AT.
    import os, signal, sys
    from finetune import recipe
    loss, calls = recipe.soft_cross_entropy, [0]
    def counting(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(*args, **kwargs)
    recipe.soft_cross_entropy = counting
    from finetune.__main__ import main
    sys.argv = ["finetune", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.early("-c", KILLER, "name=resumed", *RECIPE, env={"KILL_AT": "15"})  # started with the session, beside the suite
def test_resume_after_sigkill_mid_epoch_is_bit_identical(reference, early):
    # Micro-batch 15 is in step 7 of epoch 0; the last saved state is at step 6 (save_every_steps=3).
    (killed,) = early.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = early.folder / "runs" / "resumed" / "finetune" / "finetune"
    assert torch.load(folder / "train_state.pt", weights_only=True)["step"] == 6
    assert not (folder / "model.safetensors").exists() and not (folder / "DONE").exists()

    resumed = run_in_process("finetune", "name=resumed", *RECIPE, env=early_env(early.folder))  # in the killed run's folders
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    expected, got = load_file(str(reference / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    losses = [[json.loads(line)["loss"] for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (reference, folder)]
    assert losses[0] == losses[1]


def test_two_jobs_with_the_same_hyperparameters_train_on_their_own_data_streams(world):
    """Official model_4 and model_5 share every hyperparameter; as jobs 4 and 5 of sweep=paper_replay they
    shuffle, augment and mix on their own streams (a function of the sweep seed and the index), so their
    weights differ; job 4 run again gives the same bytes."""
    job = ["sweep=paper_replay", "sweep.fixed.init=zeroshot", "+sweep.fixed.epochs=1", *RECIPE[:3], "finetune.progress=false"]
    for name, index in (("job4", 4), ("job5", 5), ("job4again", 4)):
        result = finetune(world, name, *job, f"sweep.index={index}")
        assert result.returncode == 0, result.stderr[-3000:]
    files = {name: world["runs"] / name / "finetune" / f"model_{name[3]}" / "model.safetensors" for name in ("job4", "job5", "job4again")}
    hparams = {name: read_meta(path).hparams for name, path in files.items()}
    recipe_keys = ("lr", "weight_decay", "epochs", "label_smoothing", "mixup", "randaug")
    assert [hparams["job4"][k] for k in recipe_keys] == [hparams["job5"][k] for k in recipe_keys]
    assert hparams["job4"]["data_seed"] == sweeps.data_seed(None, {"kind": "replay", "seed": 0, "index": 4}) != hparams["job5"]["data_seed"]
    (record,) = read_records(files["job5"].parent / "results.jsonl")
    assert record["data_seed"] == hparams["job5"]["data_seed"]
    weights = {name: load_file(str(path)) for name, path in files.items()}
    assert any(not torch.equal(weights["job4"][k], weights["job5"][k]) for k in weights["job4"])
    assert files["job4"].read_bytes() == files["job4again"].read_bytes()


# torchrun's module, started with the session beside the suite (conftest's `early`), in a folder of its own: the
# command generates the same small world there (the world is a function of its config and seed).
@pytest.mark.early(
    "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "finetune", *RECIPE, "finetune.grad_accum=1", "name=ddp"
)
def test_ddp_on_two_processes_matches_one_process_at_the_same_global_batch(world, reference, early):
    # 1 process x 2 accumulation steps of 50 == 2 processes x 1 step of 50 (gloo on CPU).
    (result,) = early.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    ddp_dir = early.folder / "runs" / "ddp" / "finetune" / "finetune"
    got = load_file(str(ddp_dir / "model.safetensors"))
    expected = load_file(str(reference / "model.safetensors"))
    # BatchNorm running statistics (a ResNet tower) are per-rank buffers in DDP, as everywhere; weights must agree.
    weights = [k for k in expected if not k.endswith(BATCHNORM_BUFFERS)]
    worst = max(float((expected[k] - got[k]).abs().max()) for k in weights)
    assert worst < 1e-4, f"largest weight difference {worst}"
    # and 1 process x 1 step of 100: with mixup on, the loss depends on the global batch only. Its weights are
    # not compared: a batch of 100 rounds its convolutions in another order than two of 50 on some CPUs, and
    # AdamW turns a rounding-level change of a near-zero gradient into a step of up to lr (measured: 0.0021 after
    # 20 steps at lr 1e-3 on an AMD EPYC, while every epoch's loss agreed to 1e-7).
    whole = finetune(world, "whole", *RECIPE, "finetune.grad_accum=1")
    assert whole.returncode == 0, whole.stderr[-3000:]
    losses = {
        name: [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for name, folder in (("ddp", ddp_dir), ("whole", run_dir(world, "whole")))
    }
    assert len(losses["whole"]) == 2 and losses["ddp"] == pytest.approx(losses["whole"], rel=1e-5)
    assert len((ddp_dir / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 logs alone


def test_the_heldout_split_is_never_trained_on(world):
    """No image of the held-out split is in the data the stage trains on (`datasets.train_set`)."""
    train = datasets.train_set(world["data_cfg"], None)
    (heldout,) = datasets.eval_sets(
        OmegaConf.merge(world["data_cfg"], {"heldout": "heldout", "id": "photo", "shifts": []}), None, names=["heldout"]
    )

    def digests(dataset) -> set[str]:
        return {hashlib.sha1(dataset[i][0].tobytes()).hexdigest() for i in range(len(dataset))}

    train_digests, heldout_digests = digests(train), digests(heldout.dataset)
    assert len(heldout_digests) == len(heldout.dataset)  # the images are distinct, so the check has teeth
    assert not train_digests & heldout_digests


@pytest.mark.parametrize(
    "args,message",
    [
        (["finetune.lr=1e30", "finetune.warmup_steps=0"], "at step"),  # fails while training
    ],
)
def test_bad_input_is_one_line_and_leaves_no_checkpoint(world, args, message):
    name = "bad-" + hashlib.sha1(" ".join(args).encode()).hexdigest()[:8]
    result = finetune(
        world,
        name,
        "data.scale=small",
        "model.pretrained=null",
        "finetune.batch_size=100",
        "finetune.epochs=1",
        "finetune.progress=false",
        *args,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    folder = run_dir(world, name)
    leftovers = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".tmp", ".pt")] if folder.exists() else []
    assert leftovers == [] and not (folder / "DONE").exists()
    assert (folder / "FAILED").read_text().startswith("error:")


@pytest.mark.parametrize(
    "override,field",
    [
        ("finetune.lr=0", "finetune.lr"),
        ("finetune.lr=-1e-3", "finetune.lr"),
        ("finetune.randaug=rand-m9-x2", "finetune.randaug"),
        ("finetune.init=random", "finetune.init"),
    ],
)
def test_bad_recipe_values_are_refused_before_any_work(override, field):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=[override])
    with pytest.raises(UserError, match=field):
        resolve_recipe(cfg)


def test_an_unknown_model_or_missing_weights_are_user_errors(tmp_path):
    from models.factory import create_clip

    with pytest.raises(UserError, match="model.arch"):
        create_clip("ViT-B-99", None)
    with pytest.raises(UserError, match="model.pretrained"):
        create_clip("TinyCLIP", str(tmp_path / "missing.safetensors"))


def test_a_sweep_jobs_values_override_the_recipe():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=["sweep=demo", "sweep.index=3", "finetune.lr=0.5"])
    hp = resolve_recipe(cfg)
    drawn = sweeps.job_hparams(OmegaConf.to_container(cfg.sweep))
    assert hp.lr == drawn["lr"] != 0.5 and hp.epochs == drawn["epochs"] and hp.init == "lp"
    assert hp.lp.steps == cfg.finetune.lp.steps


def test_a_sweep_jobs_values_take_the_recipes_types():
    """The run's one recipe is typed: an official replay's `mix: 0` (an int in hparam_info.json) trains and is
    recorded as the float 0.0, as every other sweep's value is."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=["sweep=paper_grid", "+sweep.fixed.mixup=0", "+sweep.fixed.epochs=3"])
    hp = resolve_recipe(cfg)
    assert (type(hp.mixup), hp.mixup, type(hp.epochs), hp.epochs) == (float, 0.0, int, 3)


def test_lp_init_fits_the_head_on_cached_frozen_features(world, monkeypatch):
    import torch.nn.functional as F

    from finetune import linear_probe
    from finetune.train import lp_init
    from models.classifier import classifier_from_clip, zeroshot_head_weight
    from models.factory import create_clip

    cache = Path(world["env"]["MODEL_SOUPS_CACHE"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"paths.cache={cache}", "data.scale=small", "model.pretrained=null", "finetune.init=lp"])
    torch.manual_seed(0)
    clip_model, preprocess, tokenizer = create_clip("TinyCLIP", None)
    info = datasets.class_info(cfg.data)
    classifier = classifier_from_clip(clip_model, zeroshot_head_weight(clip_model, tokenizer, info.classnames, info.templates))
    tower_before = {k: v.clone() for k, v in classifier.visual.state_dict().items()}
    zeroshot_head = classifier.head.weight.detach().clone()

    lp_init(cfg, resolve_recipe(cfg), classifier, preprocess, torch.device("cpu"))
    assert all(torch.equal(tower_before[k], v) for k, v in classifier.visual.state_dict().items())  # frozen
    (cached,) = list((cache / "features").glob("features-*.safetensors"))
    features = load_file(str(cached))
    train = datasets.train_set(cfg.data, preprocess)
    assert features["features"].shape[0] == len(train) and torch.equal(features["labels"], torch.tensor([int(y) for y in train.labels]))

    def cross_entropy(weight, bias):
        return float(F.cross_entropy(features["features"] @ weight.T + bias, features["labels"]))

    assert (
        cross_entropy(classifier.head.weight.detach(), classifier.head.bias.detach()) < cross_entropy(zeroshot_head, torch.zeros(10)) - 0.05
    )

    # a second LP reads the cache instead of touching the data
    extract = linear_probe.extract_features
    monkeypatch.setattr(linear_probe, "extract_features", lambda *a, **k: pytest.fail("features recomputed"))
    lp_init(cfg, resolve_recipe(cfg), classifier, preprocess, torch.device("cpu"))
    # a world release with other set sizes (same data config) has another train set: its features are not the cached ones
    world_suite = importlib.import_module("datasets.world")
    sizes = world_suite.train_fingerprint(cfg.data)
    monkeypatch.setattr(world_suite, "train_fingerprint", lambda data_cfg: {**sizes, "train": sizes["train"] + 1})
    monkeypatch.setattr(linear_probe, "extract_features", extract)
    lp_init(cfg, resolve_recipe(cfg), classifier, preprocess, torch.device("cpu"))
    assert len(list((cache / "features").glob("features-*.safetensors"))) == 2


SWEEP = ["-m", "sweep=demo", "hydra/launcher=submitit_local", "sweep.index=0,1", "data.scale=small", "model.pretrained=null"]
SWEEP += ["finetune.batch_size=100", "finetune.warmup_steps=2", "finetune.progress=false", "name=sweep"]
SWEEP += ["finetune.lp.init_from=null"]  # no inits step here: each job fits its own LP head (the pipeline's sweeps read inits/lp)


@pytest.mark.early("finetune", *SWEEP)  # the real command (each job a submitit process), started with the session
def test_a_two_job_sweep_through_submitit_local_then_a_relaunch_skips_it(early):
    (result,) = early.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = early.folder / "runs" / "sweep" / "finetune"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        demo = OmegaConf.to_container(compose("finetune", overrides=["sweep=demo"]).sweep, resolve=True)
    stamps = {}
    for index in (0, 1):
        folder = sweep_dir / f"model_{index}"
        assert (folder / "DONE").exists() and (folder / "results.jsonl").exists()
        meta = read_meta(folder / "model.safetensors")
        drawn = sweeps.sample_random(demo["space"], demo["seed"], index)
        assert meta.hparams["lr"] == drawn["lr"] and meta.hparams["epochs"] == drawn["epochs"] and meta.hparams["init"] == "lp"
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == drawn["epochs"]
        stamps[index] = (folder / "model.safetensors").stat().st_mtime_ns

    # our launcher (hydra/launcher=local) asks each job's run folder first: both finished, so no job is submitted
    again = run_in_process("finetune", *[a.replace("submitit_local", "local") for a in SWEEP], env=early_env(early.folder))
    assert again.returncode == 0, again.stderr[-3000:]
    assert {i: (sweep_dir / f"model_{i}" / "model.safetensors").stat().st_mtime_ns for i in (0, 1)} == stamps
    assert again.stdout.count("already finished with this config") == 2 and "Submitit 'local'" not in again.stdout


def test_a_job_from_the_lp_init_file_starts_from_its_weights_without_a_zero_shot_head(world, monkeypatch):
    """A sweep job reads every weight from inits/lp, so it builds no zero-shot head (at ViT-B/32 scale a pass of
    the text tower over 1000 classes x 80 templates in each of the 72 jobs); epochs=0 saves exactly the LP init."""
    import finetune.train

    common = ["data.scale=small", "model.pretrained=null", "finetune.init=lp", "finetune.epochs=0", "finetune.progress=false"]
    lp = run_in_process("finetune", "name=lp_file", *common, "finetune.lp.steps=5", env=world["env"])
    assert lp.returncode == 0, lp.stderr[-3000:]
    lp_file = run_dir(world, "lp_file") / "model.safetensors"

    def no_head(*args, **kwargs):
        raise AssertionError("a zero-shot head was built for a job that reads the LP init")

    monkeypatch.setattr(finetune.train, "zeroshot_head_weight", no_head)
    job = run_in_process("finetune", "name=from_lp_file", *common, f"finetune.lp.init_from={lp_file}", env=world["env"])
    assert job.returncode == 0, job.stderr[-3000:]
    started, fitted = load_file(str(run_dir(world, "from_lp_file") / "model.safetensors")), load_file(str(lp_file))
    assert started.keys() == fitted.keys() and all(torch.equal(started[k], fitted[k]) for k in fitted)
    assert read_meta(run_dir(world, "from_lp_file") / "model.safetensors").hparams["lp_init_from"] == str(lp_file)
