"""Fine-tune one CLIP image tower + linear head: one run, or one job of a sweep.

`finetune(cfg)` builds everything from one typed recipe (`resolve_recipe`), then `train_loop` reads top to
bottom: restore (`_restore`), then per step the schedule, data, label smoothing, mixup, forward, loss,
backward, clip and step (`_optimizer_step`), log, save (`_maybe_save`). The recipe's math lives in
`finetune/recipe.py`, the data order in `finetune/data.py`, the resumable state in `finetune/state.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import datasets
from finetune import linear_probe, recipe, state, sweeps
from finetune.data import SeededExamples, StepBatchSampler, counter_seed, micro_batch_sizes, steps_per_epoch
from finetune.logbook import Logbook
from finetune.preemption import PreemptionGuard
from models import evaluate
from models.atomic import write_text_atomic
from models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint, sha256_prefix
from models.classifier import ImageClassifier, classifier_from_clip, first_mismatch, zeroshot_head_weight
from models.cli import output_dir, overrides
from models.errors import UserError
from models.evaluate import precision_name
from models.factory import activation_of, create_clip
from models.results import append_records, make_record
from models.schemas import Recipe

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.safetensors"
LP_FILE = "lp_init.json"  # the LP head's training accuracy, for the checkpoint metadata of a resumed run


@dataclasses.dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_recipe(cfg: DictConfig) -> Recipe:
    """The job's recipe: finetune.* with the sweep job's values on top, typed by `Recipe` (a sweep's value
    takes the field's type, e.g. replay's `mix: 0` is 0.0), then checked. The one recipe object of the run:
    it trains, and it is what the checkpoint's hparams and the logger record."""
    merged = OmegaConf.to_container(cfg.finetune, resolve=True)
    merged.update(sweeps.job_hparams(OmegaConf.to_container(cfg.sweep, resolve=True)))
    try:
        hp = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Recipe), merged))
    except OmegaConfBaseException as err:  # a sweep's value of the wrong type, or a key the recipe lacks
        raise UserError(f"finetune.{err.full_key}: {str(err).splitlines()[0]}") from None
    world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    recipe.check_hparams(dataclasses.asdict(hp), world_size=world_size)
    return hp  # type: ignore[return-value]


# --- set-up ------------------------------------------------------------------------------------------


def setup_distributed() -> Ranks:
    """torchrun (RANK/WORLD_SIZE set) or a multi-task SLURM job through submitit; else one process."""
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):  # one task per GPU: hydra.launcher.tasks_per_node
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, ranks: Ranks) -> torch.device:
    device = evaluate.resolve_device(name)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision is for GPUs: auto gives bf16 there and fp32 (no autocast) on CPU."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"finetune.precision: unknown {precision!r}; expected auto, fp32, bf16 or fp16")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise UserError(f"finetune.precision={precision} needs a GPU; use auto or fp32 on {device.type}")
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def train_transform(
    preprocess,
    randaug: str | None,
    image_size: int | tuple[int, int],
    hflip: float = recipe.HFLIP,
    crop_scale: tuple[float, float] = recipe.CROP_SCALE,
):
    """With `finetune.randaug`, timm's ImageNet training pipeline at the model's resolution (crop, flip,
    RandAugment: recipe.timm_train_augmentation), then the model's own conversion and mean/std; without
    it, the model's eval preprocessing (the official default, without --timm-aug). `hflip` and
    `crop_scale` come from the data config (`data.train_hflip`, `data.train_crop_scale`; timm's by default)."""
    from torchvision import transforms

    mean = next((t.mean for t in getattr(preprocess, "transforms", []) if isinstance(t, transforms.Normalize)), (0.5, 0.5, 0.5))
    augment = recipe.timm_train_augmentation(randaug, image_size, tuple(float(m) for m in mean), hflip, crop_scale)
    return preprocess if augment is None else transforms.Compose([augment, preprocess])


def train_geometry(data_cfg: DictConfig) -> tuple[float, tuple[float, float]]:
    """The training crop's flip probability and area range: timm's unless the data config sets them."""
    hflip = float(data_cfg.get("train_hflip", recipe.HFLIP))
    low, high = (float(x) for x in data_cfg.get("train_crop_scale", recipe.CROP_SCALE))
    if not 0.0 <= hflip <= 1.0:
        raise UserError(f"data.train_hflip must be a probability in [0, 1], got {hflip}")
    if not 0.0 < low <= high <= 1.0:
        raise UserError(f"data.train_crop_scale must be [low, high] with 0 < low <= high <= 1, got {[low, high]}")
    return hflip, (low, high)


def image_size_of(clip_model: nn.Module) -> int | tuple[int, int]:
    size = getattr(clip_model.visual, "image_size", 224)
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else int(size)


def precision_name_of(amp_dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def load_lp_init(path: str, classifier: ImageClassifier, arch: str, activation: str | None, classes: str) -> float | None:
    """Start from the sweep's LP init checkpoint (`runs/<exp>/inits/lp`), fitted once for every job."""
    state_dict, meta = load_checkpoint(path)
    if meta.kind != "lp":
        raise UserError(f"finetune.lp.init_from: {path} is a {meta.kind!r} checkpoint, not an LP init (kind 'lp')")
    if (meta.arch, meta.activation, meta.classes) != (arch, activation, classes):
        raise UserError(
            f"finetune.lp.init_from: {path} is {meta.arch}/{meta.activation}/{meta.classes}, this run builds {arch}/{activation}/{classes}"
        )
    try:
        classifier.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise UserError(f"finetune.lp.init_from: {path} does not fit this model ({first_mismatch(err)})") from None
    return meta.hparams.get("lp_train_accuracy")


def lp_init(cfg: DictConfig, hp: Recipe, classifier: ImageClassifier, preprocess, device: torch.device) -> float:
    """Fit the head on frozen features of the training split (init=lp, settings `hp.lp`); return its training accuracy."""
    lp_cfg = hp.lp
    pretrained = str(cfg.model.pretrained)
    key = {"arch": cfg.model.arch, "pretrained": pretrained, "data": OmegaConf.to_container(cfg.data, resolve=True)}
    fingerprint = datasets.train_fingerprint(cfg.data)
    if fingerprint is not None:
        key["train"] = fingerprint
    if Path(pretrained).is_file():
        key["pretrained_stat"] = [Path(pretrained).stat().st_size, Path(pretrained).stat().st_mtime_ns]
    cache_dir = Path(cfg.paths.cache) / "features" if lp_cfg.cache else None

    def compute():
        plain = datasets.train_set(cfg.data, preprocess)
        return linear_probe.extract_features(classifier, plain, cfg.data.batch_size, hp.workers, device)

    features, labels = linear_probe.cached_features(cache_dir, key, compute)
    features, labels = features.to(device), labels.to(device)  # full-batch fit where the model lives (the GPU on a cluster)
    weight, bias = linear_probe.fit_linear_head(
        features, labels, classifier.head.weight, classifier.head.bias, lp_cfg.steps, lp_cfg.lr, lp_cfg.weight_decay
    )
    with torch.no_grad():
        classifier.head.weight.copy_(weight)
        classifier.head.bias.copy_(bias)
    return float(((features @ weight.T + bias).argmax(-1) == labels).float().mean())


def text_tower_digest(clip_model: nn.Module) -> str:
    """sha256 of every weight outside the image tower: what a zero-shot head is computed from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(clip_model.state_dict().items()):
        if not name.startswith("visual."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def zeroshot_head(cfg: DictConfig, clip_model: nn.Module, tokenizer, info: datasets.ClassInfo) -> torch.Tensor:
    """The zero-shot head rows (models.classifier.zeroshot_head_weight), computed once per text tower, tokenizer
    and prompts and kept under ${paths.cache}/heads: a sweep's zero-shot and LP init jobs share one (for
    ImageNet a text-tower pass over 1,000 classes x 80 templates)."""
    prompts = [template(name) if callable(template) else template.format(name) for name in info.classnames for template in info.templates]
    key = {
        "arch": cfg.model.arch,  # the tokenizer
        "text_tower": text_tower_digest(clip_model),
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "per_class": len(info.templates),
    }

    def compute() -> dict[str, torch.Tensor]:
        return {"weight": zeroshot_head_weight(clip_model, tokenizer, info.classnames, info.templates)}

    return linear_probe.cached_tensors(Path(cfg.paths.cache) / "heads", "zeroshot_head", key, compute)["weight"]


# --- the loop ---------------------------------------------------------------------------------------


def fresh_sums() -> dict[str, float]:
    """The running sums of an epoch's metrics (`epoch_metrics`); saved with the state, so a resumed epoch
    logs what an uninterrupted one would."""
    return {"loss": 0.0, "steps": 0, "seconds": 0.0}


@dataclasses.dataclass
class LoopState:
    """Where training stands: optimizer steps done, the epoch's running sums, steps taken in this call and
    when the state was last saved (for `save_every_minutes`)."""

    step: int = 0
    sums: dict[str, float] = dataclasses.field(default_factory=fresh_sums)
    taken: int = 0
    last_save: float = dataclasses.field(default_factory=time.monotonic)

    def count(self, step_loss: torch.Tensor, tic: float) -> float:
        """One more optimizer step of loss `step_loss`, timed from `tic`; returns the time it ended."""
        self.step += 1
        self.sums["loss"] += float(step_loss)
        self.sums["steps"] += 1
        self.taken += 1
        toc = time.perf_counter()
        self.sums["seconds"] += toc - tic
        return toc


def train_loop(
    model: nn.Module,
    classifier: ImageClassifier,
    train_data: SeededExamples,
    hp: Recipe,
    device: torch.device,
    ranks: Ranks | None = None,
    run_dir: Path | None = None,
    logbook: Logbook | None = None,
    after_step: Callable[[int], None] | None = None,
) -> int:
    """Train `model` (the classifier, maybe DDP-wrapped or compiled) from its saved state, if any, to the end.

    The batches and mixup draws come from `train_data.seed`, the soft targets span the classifier's head, and
    `hp.progress` shows a bar. The stage gives a run folder (resumable state, periodic saves) and a logbook
    (per-epoch metrics); without them this is the plain loop over `train_data`, in memory (the world probe calls it so).
    `after_step(step)`, if given, runs after each optimizer step (e.g. a held-out curve); the loop puts
    the model back in training mode afterwards. Returns the number of optimizer steps taken in this call.
    """
    ranks = ranks or Ranks()
    seed, num_classes = train_data.seed, classifier.head.out_features
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    amp_dtype = autocast_dtype(hp.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None  # fp16's loss scaling
    per_epoch = steps_per_epoch(len(train_data), hp.batch_size)
    if hp.batch_size > len(train_data):
        raise UserError(f"finetune.batch_size={hp.batch_size} is larger than the training split ({len(train_data)} examples)")
    total_steps = hp.epochs * per_epoch
    save_to = run_dir if ranks.main else None  # rank 0 writes the state; every rank takes part in the decision

    at = _restore(run_dir, classifier, optimizer, scaler, total_steps)  # resume: weights, optimizer moments, position, RNG
    if logbook is not None:
        logbook.rewind(at.step)  # a fresh start (step 0) also clears the metrics of an earlier forced run
    guard = PreemptionGuard().install()
    bar = progress_bar(total_steps, at.step, hp.batch_size, hp.progress and ranks.main)
    train_mode(model, hp.freeze_bn)
    while at.step < total_steps:
        epoch, start = divmod(at.step, per_epoch)
        sampler = StepBatchSampler(len(train_data), hp.batch_size, hp.grad_accum, seed, epoch, ranks.rank, ranks.world, start_step=start)
        micro_batches = iter(DataLoader(train_data, batch_sampler=sampler, num_workers=hp.workers, pin_memory=device.type == "cuda"))
        tic = time.perf_counter()
        for _ in range(start, per_epoch):
            lr = recipe.warmup_cosine_lr(at.step, hp.lr, hp.warmup_steps, total_steps)  # schedule, per batch
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=device)
            # the step's examples (fewer at an epoch's last, partial step) and this rank's share of them
            sizes = micro_batch_sizes(len(train_data), hp.batch_size, hp.grad_accum * ranks.world, at.step % per_epoch)
            for micro in range(hp.grad_accum):
                images, labels = next(micro_batches)  # data
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                targets = recipe.soft_targets(labels, num_classes, hp.label_smoothing)  # label smoothing
                # mixup: one lam per optimizer step, the same on every rank and micro-batch, so results depend on
                # the global batch only (not on world size x grad_accum)
                mix_rng = torch.Generator().manual_seed(counter_seed(seed, at.step, 0))
                images, targets = recipe.mixup(images, targets, hp.mixup, mix_rng)  # mixup
                last = micro == hp.grad_accum - 1
                sync = nullcontext() if last or ranks.world == 1 else model.no_sync()  # all-reduce grads once per step
                # the mean over the step's examples (DDP averages over ranks); a stand-in for an empty slice weighs 0
                weight = ranks.world / sum(sizes) if sizes[ranks.rank * hp.grad_accum + micro] else 0.0
                with sync, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(images)  # forward
                    loss = recipe.soft_cross_entropy(logits, targets, reduction="sum") * weight  # loss
                    (scaler.scale(loss) if scaler else loss).backward()  # backward
                step_loss += loss.detach()  # x world: the ranks' mean (epoch_metrics) is the step's mean
            if not torch.isfinite(step_loss):
                raise UserError(f"loss is {step_loss.item()} at step {at.step} (epoch {epoch}); lower finetune.lr or check the data")
            _optimizer_step(classifier, optimizer, scaler, hp.grad_clip)  # clip, step
            tic = at.count(step_loss, tic)  # log
            bar.update(1)
            bar.set_postfix(loss=f"{float(step_loss):.4f}", lr=f"{lr:.2e}", refresh=False)
            epoch_end = at.step % per_epoch == 0
            if epoch_end:
                if logbook is not None:
                    logbook.log_epoch(epoch_metrics(epoch, at.step, lr, at.sums, hp.batch_size, ranks, device))
                at.sums = fresh_sums()
            preempted = stop_requested(guard, ranks, device)
            _maybe_save(at, hp, total_steps, epoch_end or preempted, save_to, classifier, optimizer, scaler)  # save
            if preempted:
                _hand_over(guard, bar, ranks)
            if after_step is not None:
                after_step(at.step)
                train_mode(model, hp.freeze_bn)
    bar.close()
    guard.uninstall()
    return at.taken


def _restore(
    run_dir: Path | None, classifier: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, total_steps: int
) -> LoopState:
    """The loop's state: at step 0, or where the run folder's saved state left off (weights, optimizer
    moments, loss scale, position, epoch sums and RNG states restored)."""
    saved = state.load_state(run_dir) if run_dir is not None else None
    if saved is None:
        return LoopState()
    classifier.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    state.set_rng_states(saved["rng"])
    log.info("resuming from %s at step %d of %d", run_dir / state.STATE_FILE, saved["step"], total_steps)
    return LoopState(step=int(saved["step"]), sums=dict(saved["epoch_sums"]))


def _optimizer_step(
    classifier: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, grad_clip: float | None
) -> None:
    """Clip the global gradient norm (on unscaled gradients under fp16), step AdamW, clear the gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _maybe_save(
    at: LoopState,
    hp: Recipe,
    total_steps: int,
    due: bool,
    run_dir: Path | None,
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Save the resumable state when `due` (an epoch's end, a preemption), every `save_every_steps` steps
    and every `save_every_minutes`; not after the last step (the checkpoint follows). `run_dir` None: no
    file (ranks other than 0, or a run in memory), but the clock restarts as on rank 0."""
    timed = hp.save_every_minutes and time.monotonic() - at.last_save > 60 * hp.save_every_minutes
    periodic = hp.save_every_steps and at.step % hp.save_every_steps == 0
    if (timed or periodic or due) and at.step < total_steps:
        if run_dir is not None:
            state.save_state(run_dir, classifier, optimizer, at.step, at.sums, scaler)
        at.last_save = time.monotonic()


def _hand_over(guard: PreemptionGuard, bar: tqdm, ranks: Ranks) -> NoReturn:
    """Preempted, the state saved: every rank stops at this step and submitit requeues the job."""
    barrier(ranks)
    bar.close()
    guard.hand_over()  # submitit: checkpoint() + requeue + exit
    raise SystemExit(-1)  # ranks other than 0: submitit's handler returns without exiting


def progress_bar(total_steps: int, step: int, batch_size: int, show: bool) -> tqdm:
    """Images per second and the time left; off where not shown and for epochs=0 (the init is saved, no loop)."""
    return tqdm(
        total=total_steps, initial=step, unit="img", unit_scale=batch_size, disable=not show or total_steps == 0, dynamic_ncols=True
    )


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode, with BatchNorm statistics kept fixed when the recipe says so."""
    model.train()
    if freeze_bn:
        recipe.freeze_batchnorm(model)


def stop_requested(guard: PreemptionGuard, ranks: Ranks, device: torch.device) -> bool:
    """Whether any rank caught the preemption signal (all ranks must stop at the same step)."""
    if ranks.world == 1:
        return guard.requested
    flag = torch.tensor([1.0 if guard.requested else 0.0], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def epoch_metrics(
    epoch: int, step: int, lr: float, sums: dict[str, float], batch_size: int, ranks: Ranks, device: torch.device
) -> dict[str, Any]:
    loss = torch.tensor([sums["loss"] / max(sums["steps"], 1)], device=device)
    if ranks.world > 1:
        dist.all_reduce(loss)
        loss /= ranks.world
    return {
        "epoch": epoch,
        "step": step,
        "loss": float(loss),
        "lr": lr,
        "images_per_s": sums["steps"] * batch_size / max(sums["seconds"], 1e-9),
        "seconds": sums["seconds"],
    }


# --- the stage ----------------------------------------------------------------------------------------


def finetune(cfg: DictConfig) -> Path:
    """Fine-tune one model into the run folder; return the checkpoint path."""
    hp = resolve_recipe(cfg)
    run_dir = output_dir()
    ranks = setup_distributed()
    device = pick_device(cfg.device, ranks)
    autocast_dtype(hp.precision, device)  # refuse a bad precision before any work
    seed = sweeps.data_seed(cfg.seed, OmegaConf.to_container(cfg.sweep, resolve=True))  # this job's data stream
    torch.manual_seed(seed)
    if hp.threads:
        torch.set_num_threads(hp.threads)

    lp_from = hp.lp.init_from if hp.init == "lp" else None
    if lp_from and not Path(str(lp_from)).is_file():
        raise UserError(f"finetune.lp.init_from: {lp_from}: no such checkpoint; run the LP init first (finetune.init=lp finetune.epochs=0)")
    clip_model, preprocess, tokenizer = create_clip(cfg.model.arch, cfg.model.pretrained)
    activation = activation_of(clip_model.visual)
    info = datasets.class_info(cfg.data)
    hflip, crop_scale = train_geometry(cfg.data)
    augment = train_transform(preprocess, hp.randaug, image_size_of(clip_model), hflip, crop_scale)
    train_data = SeededExamples(
        datasets.train_set(cfg.data, augment), seed, random_transform=augment is not preprocess
    )  # data errors first
    if lp_from:  # the LP init file holds every weight: no zero-shot head (a text-tower pass over classes x templates)
        classifier = classifier_from_clip(clip_model, num_classes=len(info.classnames)).to(device)
    else:
        head = zeroshot_head(cfg, clip_model, tokenizer, info)  # init=zeroshot, or the LP's start
        classifier = classifier_from_clip(clip_model, head).to(device)
    del clip_model  # the text tower is not trained

    lp_accuracy = None
    if hp.init == "lp" and lp_from:  # the sweep's one LP init, bit for bit, on every rank (also on resume: for its metadata)
        lp_accuracy = load_lp_init(lp_from, classifier, cfg.model.arch, activation, info.classes_id)
        log.info("LP init read from %s (training accuracy %s)", lp_from, lp_accuracy)
    elif hp.init == "lp" and ranks.main:
        if state.load_state(run_dir) is None:
            lp_accuracy = lp_init(cfg, hp, classifier, preprocess, device)  # DDP below broadcasts rank 0's weights
            log.info("linear probe: training accuracy %.4f", lp_accuracy)
            write_text_atomic(run_dir / LP_FILE, json.dumps({"lp_train_accuracy": lp_accuracy}) + "\n")
        else:  # resumed: the saved state holds the LP-initialised weights; the metadata needs its accuracy too
            lp_accuracy = json.loads((run_dir / LP_FILE).read_text())["lp_train_accuracy"]

    model: nn.Module = classifier
    if ranks.world > 1:
        model = DistributedDataParallel(classifier, device_ids=[device.index] if device.type == "cuda" else None)
    if hp.compile:
        model = torch.compile(model)

    logbook = Logbook(
        run_dir,
        cfg.logger,
        str(cfg.run_name),
        {"finetune": dataclasses.asdict(hp), "model": OmegaConf.to_container(cfg.model)},
        enabled=ranks.main,
    )
    try:
        train_loop(model, classifier, train_data, hp, device, ranks, run_dir, logbook)
        checkpoint = run_dir / CHECKPOINT_FILE
        if ranks.main:
            hparams = dict(
                dataclasses.asdict(hp),
                parent_pretrained=cfg.model.pretrained,
                lp_init_from=str(lp_from) if lp_from else None,
                train_precision=precision_name_of(autocast_dtype(hp.precision, device)),
                seed=cfg.seed,
                data_seed=seed,
                train_hflip=hflip,
                train_crop_scale=list(crop_scale),
                sweep=OmegaConf.to_container(cfg.sweep, resolve=True),
                lp_train_accuracy=lp_accuracy,
            )
            meta = CheckpointMeta(
                arch=cfg.model.arch,
                pretrained=cfg.model.pretrained,
                num_classes=len(info.classnames),
                classes=info.classes_id,
                kind=checkpoint_kind(hp),
                hparams=hparams,
                activation=activation,
            )
            save_checkpoint(checkpoint, classifier.state_dict(), meta)
            if hp.heldout_eval:
                heldout = held_out_record(cfg, classifier.eval(), preprocess, device, checkpoint, meta.kind, seed)
                logbook.log_summary({"heldout_top1": heldout["top1"]})
            if not hp.keep_state:
                (run_dir / state.STATE_FILE).unlink(missing_ok=True)
        barrier(ranks)  # DONE (written after we return) must not precede rank 0's checkpoint
    finally:
        logbook.close()
    return checkpoint


def checkpoint_kind(hp: Recipe) -> str:
    """epochs=0 saves the init itself: the zero-shot model or the LP-initialised one (the paper's model_0)."""
    return "individual" if hp.epochs > 0 else hp.init


def held_out_record(
    cfg: DictConfig, classifier: nn.Module, preprocess, device: torch.device, checkpoint: Path, kind: str, data_seed: int
) -> dict[str, Any]:
    """Held-out accuracy (the split fine-tuning never sees) as a results record in the run folder."""
    (heldout,) = datasets.eval_sets(cfg.data, preprocess, names=[cfg.data.heldout])
    ((correct, n),) = evaluate.accuracies(
        [classifier], heldout, batch_size=cfg.data.batch_size, workers=cfg.finetune.workers, device=device
    )
    record = make_record(
        model_id=checkpoint.parent.name,  # the run folder's name, as eval names it
        kind=kind,
        dataset=heldout.name,
        role="heldout",
        correct=correct,
        n=n,
        checkpoint={"path": str(checkpoint), "sha256": sha256_prefix(checkpoint)},
        config=overrides(),
        precision=precision_name(False, device),  # evaluate.accuracies runs without autocast by default
        data_seed=data_seed,
        **heldout.provenance,
    )
    append_records(checkpoint.parent, [record])
    log.info("held-out accuracy on %s: %.4f (%d images)", heldout.name, record["top1"], n)
    return record
