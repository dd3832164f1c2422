"""The typed configs: every `finetune.*` and `soup.*` key, its type and its default, declared once.

Each dataclass is a Hydra structured config: `register_configs()` (run when models.cli is imported, as
its resolvers are) stores them in Hydra's ConfigStore under `schema/...`, and `conf/finetune/default.yaml`
and `conf/soup/<option>.yaml` start from them (`defaults:`), so the YAML files only set what an option
changes and Hydra refuses a typo or a wrong type while composing, before any work. They live here, in
the shared package, because every stage composes every group (conf/base.yaml) and may import only
models/. The soup library validates through the same classes (`greedy_soup(accept=...)` checks
GreedyParams), and soups/registry.py names each method's class. No Hydra and no torch at import.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MISSING = "???"  # OmegaConf's marker of a value the YAML file must set (name, run_name, loader settings)
ACCUMULATE = ("float32", "float64")
ORDERS = ("sorted", "random")
ACCEPT = ("gt", "ge")  # soups.greedy.ACCEPT_RULES: strict > (the official code) or >= (the paper)
ENDPOINTS = ("uniform", "best")  # WiSE-FT's fine-tuned endpoint among several ingredients
HEADS = ("own", "zeroshot", "auto")  # eval.head (models/heads.py)


def _one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; use {' or '.join(allowed)}")


def check_alpha(alpha: float) -> None:
    """WiSE-FT interpolates: α outside [0, 1] would extrapolate away from both endpoints."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (interpolation, not extrapolation), got {alpha}")


@dataclasses.dataclass
class SoupParams:
    """What every method takes (`soup=uniform`, `ensemble` and `model_stock` take nothing more)."""

    name: str = MISSING  # the method, a key of soups.registry.METHODS
    run_name: str = MISSING  # the run folder and model_id: runs/<name>/soups/<run_name>
    init: str | None = None  # θ0, the zero-shot (or LP) init checkpoint: wise_ft and model_stock start from it
    evaluate: bool = True  # evaluate the result on eval.sets and write results records
    eval_chunk: int = 8  # models scored per decoded batch (shared decoding) when evaluating several
    accumulate: str = "float32"  # dtype of running sums: float32 | float64
    # ingredients fine-tuned on different tasks (class lists) from one foundation: the method averages their shared
    # image tower only; heads are never averaged across tasks, and the soup is scored on this stage's data with the
    # head of its ingredients of that task, else a zero-shot head (models/heads.py)
    across_tasks: bool = False

    def __post_init__(self) -> None:
        _one_of("accumulate", self.accumulate, ACCUMULATE)
        if self.eval_chunk < 1:
            raise ValueError(f"eval_chunk must be >= 1, got {self.eval_chunk}")


@dataclasses.dataclass
class GreedyParams(SoupParams):
    """The greedy soup and the greedy ensemble (paper, Recipe 1)."""

    order: str = "sorted"  # sorted (by held-out accuracy, best first) | random (the paper's ablation; seed=...)
    accept: str = "gt"  # gt: strict > as the official code | ge: the paper's >=
    early_rejection: bool = True  # stop scoring a candidate once it cannot win (exact: the same selection)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("order", self.order, ORDERS)
        _one_of("accept", self.accept, ACCEPT)


@dataclasses.dataclass
class LearnedParams(SoupParams):
    """The learned soup (paper, App. I): AdamW on the mixing weights over the held-out split."""

    lr: float = 0.05  # AdamW, as the official by-layer script
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = MISSING  # conf/soup/learned.yaml: ${data.batch_size}
    workers: int = MISSING  # conf/soup/learned.yaml: ${data.workers}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:  # no step leaves the mixing weights at their uniform start: that is the uniform soup
            raise ValueError(f"epochs must be >= 1 (with {self.epochs} the learned soup is the uniform soup: use soup=uniform)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0; got {self.lr}, {self.weight_decay}")


def _wise_ft_alphas() -> list[float]:
    return [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclasses.dataclass
class WiseFTParams(SoupParams):
    """WiSE-FT: (1 − α)·θ0 + α·fine-tuned over a grid of α, one results record per α. θ0 (`init`) is the
    zero-shot model (conf/soup/wise_ft.yaml: runs/<name>/inits/zeroshot), as the WiSE-FT reference."""

    alphas: list[float] = dataclasses.field(default_factory=_wise_ft_alphas)
    alpha: float = 0.5  # the α whose weights are written to model.safetensors
    # the fine-tuned endpoint among several ingredients: uniform (their uniform soup) | best (the best on held-out:
    # the WiSE-FT paper's setting, one fine-tuned model); one ingredient (e.g. the greedy soup) is the endpoint itself
    endpoint: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.alphas:  # no α: a finished run without one record, and no WiSE-FT row in the table
            raise ValueError("alphas: the list is empty; give the α to score, e.g. soup.alphas=[0.5]")
        _one_of("endpoint", self.endpoint, ENDPOINTS)
        if any(not 0.0 <= float(a) <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas: every α must lie in [0, 1] (interpolation, not extrapolation), got {list(self.alphas)}")
        check_alpha(self.alpha)


def _task_arithmetic_scalings() -> list[float]:
    return [round(0.05 * i, 2) for i in range(21)]  # Ilharco et al. 2023, Sec. 2: λ in {0, 0.05, ..., 1}, picked on held-out


@dataclasses.dataclass
class TaskArithmeticParams(SoupParams):
    """Task arithmetic (Ilharco et al. 2023): θ0 + λ·Σ_t τ_t from the foundation θ0 (`init`), one task vector per task."""

    scaling: float | None = None  # λ; null: the one of `scalings` with the best held-out accuracy, as the reference picks it
    scalings: list[float] = dataclasses.field(default_factory=_task_arithmetic_scalings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scaling is None and not self.scalings:
            raise ValueError("scalings: the list is empty; give the λ to try, e.g. soup.scalings=[0.3,0.5], or one soup.scaling=0.4")


# --- finetune.* -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class LinearProbe:
    """For init=lp: logistic regression on cached frozen features by full-batch L-BFGS to convergence,
    starting from the zero-shot head (finetune/linear_probe.py)."""

    steps: int = 300  # most L-BFGS iterations
    lr: float = 1.0  # L-BFGS step length (1: the line search's unit step)
    weight_decay: float = 1.0e-5  # L2 on the head's weight, on the mean loss: scikit-learn's C = 1 / (weight_decay · n)
    cache: bool = True  # cache features under ${paths.cache}/features
    # An LP-init checkpoint (kind lp) to start from instead of fitting; the sweeps set it to
    # runs/<name>/inits/lp/model.safetensors, so the LP head is fitted once per sweep.
    init_from: str | None = None


@dataclasses.dataclass
class Recipe:
    """Every knob of fine-tuning; a sweep (conf/sweep/) overrides some per job."""

    init: str = "zeroshot"  # zeroshot | lp (head trained on frozen features first, then end to end)
    lr: float = 3.0e-5  # peak learning rate of AdamW
    weight_decay: float = 0.1
    epochs: int = 10
    batch_size: int = 512  # global batch per optimizer step (all ranks, all accumulation steps)
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup_steps: int = 500  # linear warmup, then cosine to 0; stepped per batch
    grad_clip: float | None = 1.0  # max global grad norm; null = off
    label_smoothing: float = 0.0
    mixup: float = 0.0  # mixup strength alpha; 0 = off
    randaug: str | None = None  # timm RandAugment string, e.g. rand-m9-n2; null = off
    # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 (GPU only); experiment=paper_vitb32: fp32, as the reference code
    precision: str = "auto"
    compile: bool = False  # torch.compile the classifier
    freeze_bn: bool = True  # BatchNorm towers (the tiny CLIP's ResNet): keep the pretrained running statistics, so soups can average
    workers: int = MISSING  # conf/finetune/default.yaml: ${data.workers}
    threads: int | None = None  # torch CPU threads; null = torch's default. 1 when parallel jobs share a CPU (submitit_local)
    lp: LinearProbe = dataclasses.field(default_factory=LinearProbe)
    # Resumable training state (model, optimizer, step, RNG) in the run folder.
    save_every_steps: int = 0  # 0 = only at epoch ends (and on preemption)
    save_every_minutes: int | float = 10  # (int | float: a whole number stays one in the recorded hparams)
    keep_state: bool = False  # keep train_state.pt after a run finishes
    heldout_eval: bool = True  # held-out accuracy at the end, into results.jsonl
    progress: bool = True  # tqdm bar with images/s


@dataclasses.dataclass
class PretrainConfig:
    """`python -m datasets.world task=pretrain`: the tiny CLIP's contrastive pretraining on the world's corpus
    (conf/world.yaml's `pretrain:` starts from this class; datasets/world/pretrain.py runs it)."""

    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    shift_px: int = 2  # random translation augmentation, in pixels (0 = off)
    time_budget_s: float | None = None  # stop early (for quick probes); None = run all steps
    resume_file: str | None = None  # a killed pretraining resumes from here (saved every `checkpoint_every` steps)
    checkpoint_every: int = 250
    save_dtype: str = "float32"  # the written weights' dtype: float32 | float16
    threads: int = 1  # fixed, so the CPU run is bit-for-bit reproducible (and no thread stalls on a shared machine)


@dataclasses.dataclass
class EvalOptions:
    """`eval.*`: the evaluation protocol of every stage that scores models (eval/, soups/, models/evaluate.py).
    conf/eval/default.yaml starts from this class and only points batch_size and workers at `data.*`."""

    sets: Any = "all"  # all | heldout | id | shifts | a list of set names, e.g. [ImageNet,ImageNetV2]
    # own: the checkpoint's head (the dataset must have its classes) | zeroshot: a zero-shot head for the dataset's
    # classes from the pretrained text tower of the checkpoint's foundation | auto: own where the checkpoint (or a
    # soup across tasks' ingredient) was fine-tuned on these classes, else zero-shot (models/heads.py)
    head: str = "own"
    share_decoding: bool = True  # decode each image once for all checkpoints of a pass
    max_models_per_pass: int = 8  # checkpoints held in memory together when sharing decoding
    amp: Any = "auto"  # auto (float16 autocast on CUDA only) | true | false
    save_logits: bool = False  # write <out>/logits/<model_id>/<set>.safetensors (logits + labels)
    logits_dtype: str = "float16"  # float16 | bfloat16 | float32
    # soups stage: an eval run folder whose float32 logits (save_logits, logits_dtype=float32) of the same
    # checkpoints, data and precision stand in for the ensembles' forward passes (same floats)
    logits_from: str | None = None
    # ImageNet-ReaL from timm's labels, same pass as ImageNet top-1. auto: when every val file has its official
    # name (ILSVRC2012_val_%08d.JPEG), else skipped, saying why; true: required; false: off
    real: Any = "auto"
    # path to the multilabel annotations of Shankar et al. 2020 (human_accuracy_v3.0.0.json, docs/data.md);
    # null: no multilabel column (the run says so once)
    multilabel: str | None = None
    # tfds: `correct` or `unclear` counts, mean of per-class accuracies (the dataset's TFDS card; the default:
    # the paper's ViT-G rows come from a TFDS-based JAX pipeline, so its column most likely follows the card;
    # not checked against the paper's code); shankar: `correct` only, pooled over images (the authors'
    # human_accuracy.py). Every record names its protocol.
    multilabel_protocol: str = "tfds"
    # a bar per set on stderr with images/s and the time left. auto: when stderr is a terminal (not in a
    # cluster job's log); true | false. Not part of a run's identity
    progress: Any = "auto"
    skip_bad_images: bool = False  # false: an unreadable image is an error naming it; true: skip and count it
    batch_size: int = 256  # conf/eval/default.yaml: data.batch_size
    workers: int = 0  # conf/eval/default.yaml: data.workers


SCHEMA_NODES = {  # ConfigStore group/name -> dataclass; conf/ refers to them as /schema/<group>@_here_: <name>
    ("schema/soup", "common"): SoupParams,
    ("schema/soup", "greedy"): GreedyParams,
    ("schema/soup", "learned"): LearnedParams,
    ("schema/soup", "wise_ft"): WiseFTParams,
    ("schema/soup", "task_arithmetic"): TaskArithmeticParams,
    ("schema/finetune", "recipe"): Recipe,
    ("schema/world", "pretrain"): PretrainConfig,
    ("schema/eval", "options"): EvalOptions,
}


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (before Hydra composes)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), node in SCHEMA_NODES.items():
        store.store(group=group, name=name, node=node)
