"""The fine-tuning recipe as a typed dataclass: the one place its fields and defaults live.

`Recipe` is the Hydra structured config of `conf/finetune/default.yaml` (stored in the ConfigStore as
`schema/finetune/recipe` by `register_configs()`, which `python -m finetune` calls before Hydra composes),
so a typo or a wrong type in `finetune.*` is refused before any work. The training loop reads the same
class (finetune.train.resolve_recipe: the config with the sweep job's values on top). No torch here, so
`--help` stays fast.
"""

from __future__ import annotations

import dataclasses

MISSING = "???"  # OmegaConf's marker of a value the YAML file must set


@dataclasses.dataclass
class LinearProbe:
    """For init=lp: full-batch AdamW on cached frozen features, starting from the zero-shot head."""

    steps: int = 300
    lr: float = 1.0e-3
    weight_decay: float = 0.0
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


def register_configs() -> None:
    """Store `Recipe` in Hydra's ConfigStore (call before Hydra composes)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema/finetune", name="recipe", node=Recipe)
