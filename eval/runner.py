"""The eval stage: score checkpoints on the held-out, id and shift sets and write results records.

Each checkpoint is loaded once and scored on every requested set. With `eval.share_decoding=true`, up
to `eval.max_models_per_pass` checkpoints of one architecture run on each decoded batch together.
The id set's other labellings (ImageNet-ReaL, multilabel: `eval.real`, `eval.multilabel`) are scored from
the same pass and written as records of their own (role `id_relabel`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

import datasets
from eval.checkpoints import checkpoint_sha256, model_ids, resolve_checkpoints
from eval.distributed import init_distributed, is_main_process
from models.atomic import write_text_atomic
from models.checkpoint import CheckpointMeta, read_meta
from models.classifier import ImageClassifier, load_classifier
from models.errors import UserError
from models.evaluate import SetScores, precision_name, score_models, show_progress
from models.heads import check_head_choice, head_for
from models.logits import save_logits
from models.results import RESULTS_FILE, append_records, read_records, set_records

log = logging.getLogger(__name__)

SET_GROUPS = {"heldout": ("heldout",), "id": ("id",), "shifts": ("shift",), "all": ("heldout", "id", "shift")}
LOGITS_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def selected_sets(sets: str | Sequence[str], data_cfg: Any) -> list[str]:
    """`all | heldout | id | shifts` or a list of set names, in the suite's order."""
    available = datasets.set_names(data_cfg)
    if isinstance(sets, str) and sets in SET_GROUPS:
        return [name for name, role in available if role in SET_GROUPS[sets]]
    names = [sets] if isinstance(sets, str) else list(sets)
    known = [name for name, _ in available]
    for name in names:
        if name not in known:
            raise UserError(f"eval.sets: unknown set {name!r}; expected all, heldout, id, shifts or some of {known}")
    return names


def check_classes(meta: CheckpointMeta, info: datasets.ClassInfo, path: Path) -> None:
    if meta.num_classes != len(info.classnames) or meta.classes != info.classes_id:
        raise UserError(
            f"{path}: checkpoint has {meta.num_classes} classes ({meta.classes!r}) but the dataset has "
            f"{len(info.classnames)} ({info.classes_id!r}); pick the matching data=... or checkpoint, or score its image tower with a "
            "zero-shot head for these classes: eval.head=zeroshot"
        )


def val_transform(classifier: ImageClassifier) -> Callable:
    """The model's own open_clip evaluation transform (as `create_model_and_transforms` builds it)."""
    return image_transform_v2(PreprocessCfg(**classifier.visual.preprocess_cfg), is_train=False)


def chunks(paths: list[Path], metas: list[CheckpointMeta], size: int) -> list[list[int]]:
    """Indices grouped by architecture (one transform per pass), at most `size` per pass."""
    by_arch: dict[str, list[int]] = {}
    for i, meta in enumerate(metas):
        by_arch.setdefault(meta.arch, []).append(i)
    return [group[start : start + size] for group in by_arch.values() for start in range(0, len(group), size)]


def checkpoint_set_records(
    model_id: str,
    meta: CheckpointMeta,
    checkpoint: dict,
    eval_set: datasets.EvalSet,
    scores: SetScores,
    config: list[str],
    precision: str,
    head: dict | None = None,
) -> list[dict]:
    """A checkpoint's records on one set (models.results.set_records), per-class accuracies on the set's own.
    `head`: the provenance of a head other than the checkpoint's own (models.heads.head_for), with the classes it scores."""
    common = {"model_id": model_id, "kind": meta.kind, "checkpoint": checkpoint, "config": config, "arch": meta.arch}
    common.update(classes=meta.classes, head="own", skipped=len(scores.skipped), precision=precision, **eval_set.provenance)
    common.update(head or {})
    return set_records(
        common,
        eval_set.name,
        eval_set.role,
        scores.correct,
        scores.n,
        scores.relabelled,
        per_class_top1=scores.per_class_top1(),
        per_class_n=scores.per_class_n.tolist(),
        skipped_examples=scores.skipped[:10],
    )


def checked_relabellings(data_cfg: Any, eval_cfg: Any, names: Sequence[str]) -> dict[str, list]:
    """Set name -> its relabellings, built (and their inputs checked) before any set is scored."""
    id_names = [name for name, role in datasets.set_names(data_cfg) if role == "id" and name in names]
    id_sets = datasets.eval_sets(data_cfg, None, id_names) if id_names else []
    return {s.name: datasets.relabellings(data_cfg, eval_cfg, s) for s in id_sets}


def reusable_records(out: Path, ids: Sequence[str], provenance: Sequence[dict], names: Sequence[str]) -> dict[int, list[dict]]:
    """Checkpoint index -> its records already in `out/results.jsonl`, for each checkpoint scored there on every
    set in `names` with the same file (path and sha256) under the same model id. The file exists only when
    the stage wrapper updates a finished run whose checkpoints changed (models.cli: it removes an
    unfinished attempt's records), so the records were written under this run's config."""
    path = out / RESULTS_FILE
    if not path.exists():
        return {}
    earlier = read_records(path)
    reused = {}
    for index, (model_id, checkpoint) in enumerate(zip(ids, provenance)):
        own = [r for r in earlier if r.get("checkpoint") == checkpoint and r["model_id"] == model_id]
        own = [r for r in own if r["dataset"] in names or r.get("of_dataset") in names]
        if set(names) <= {r["dataset"] for r in own}:
            reused[index] = own
    return reused


@dataclasses.dataclass
class EvalPlan:
    """What evaluate_checkpoints checked before any scoring: the checkpoints, their heads and the sets."""

    paths: list[Path]
    metas: list[CheckpointMeta]
    heads: list[tuple | None]  # models.heads.head_for: None is the checkpoint's own head
    info: Any  # the data's class names and id (datasets.class_info)
    names: list[str]  # the sets to score
    relabellings: dict[str, list]  # per set: ReaL / multilabel


def plan_eval(
    checkpoints: str | Sequence[str], data_cfg: Any, eval_cfg: Any, expected_arch: str | None, chosen_foundation: str | None
) -> EvalPlan:
    """Every check a user's input can fail, before any model is loaded: heads, classes, architecture, held-out split,
    logits dtype, relabellings."""
    check_head_choice(str(eval_cfg.head))
    paths = resolve_checkpoints(checkpoints)
    metas = [read_meta(p) for p in paths]
    info = datasets.class_info(data_cfg)
    heads = [head_for(meta, info, str(eval_cfg.head), path, chosen_foundation) for path, meta in zip(paths, metas)]
    for path, meta, head in zip(paths, metas, heads):
        if head is None:
            check_classes(meta, info, path)
        if expected_arch is not None and meta.arch != expected_arch:
            raise UserError(
                f"{path}: checkpoint is {meta.arch} but model= asks for {expected_arch}; eval rebuilds each checkpoint's "
                "own architecture, so drop model= or pick the matching one"
            )
    names = selected_sets(eval_cfg.sets, data_cfg)
    if data_cfg.heldout in names:
        datasets.check_heldout_split(data_cfg, [(str(p), m) for p, m in zip(paths, metas)])
    if str(eval_cfg.logits_dtype) not in LOGITS_DTYPES:
        raise UserError(f"eval.logits_dtype: unknown dtype {str(eval_cfg.logits_dtype)!r}; expected one of {sorted(LOGITS_DTYPES)}")
    return EvalPlan(paths, metas, heads, info, names, checked_relabellings(data_cfg, eval_cfg, names))


def evaluate_checkpoints(
    checkpoints: str | Sequence[str],
    data_cfg: Any,
    eval_cfg: Any,
    out: Path,
    device: torch.device,
    config: Sequence[str] = (),
    expected_arch: str | None = None,
    chosen_foundation: str | None = None,
) -> list[dict]:
    """Evaluate every checkpoint on the selected sets; the main process appends records to `out/results.jsonl`.

    Each checkpoint is rebuilt from its own metadata; `expected_arch` (a `model=` the user chose) must match it.
    With `eval.head` other than own, each is scored with the head models.heads.head_for gives it on this data
    (a zero-shot head from `chosen_foundation`, the model.pretrained the user chose, or the checkpoint's own).
    """
    plan = plan_eval(checkpoints, data_cfg, eval_cfg, expected_arch, chosen_foundation)
    paths, metas, heads = plan.paths, plan.metas, plan.heads
    ids = model_ids(paths)
    precision = precision_name(eval_cfg.amp, device)
    per_pass = int(eval_cfg.max_models_per_pass) if eval_cfg.share_decoding else 1
    provenance = [{"path": str(path), "sha256": checkpoint_sha256(path)} for path in paths]
    out = Path(out)
    reused = reusable_records(out, ids, provenance, plan.names)
    if reused and is_main_process():
        log.info("reusing the records of %d of %d checkpoints, scored by this run before its folder grew", len(reused), len(paths))
    if is_main_process() and (out / RESULTS_FILE).exists():  # what is not reused is rescored: its old records go
        write_text_atomic(out / RESULTS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for i in sorted(reused) for r in reused[i]))
    records = [r for i in sorted(reused) for r in reused[i]]
    todo = [i for i in range(len(paths)) if i not in reused]
    for chunk in chunks([paths[i] for i in todo], [metas[i] for i in todo], per_pass):
        chunk = [todo[j] for j in chunk]
        models = [with_head(load_classifier(paths[i], device)[0], heads[i]) for i in chunk]
        for eval_set in datasets.eval_sets(data_cfg, val_transform(models[0]), plan.names):
            eval_set.relabellings = plan.relabellings.get(eval_set.name, [])
            all_scores = score_models(
                models,
                eval_set,
                batch_size=int(eval_cfg.batch_size),
                workers=int(eval_cfg.workers),
                device=device,
                amp=eval_cfg.amp,
                skip_bad_images=bool(eval_cfg.skip_bad_images),
                keep_logits=bool(eval_cfg.save_logits),
                logits_dtype=LOGITS_DTYPES[str(eval_cfg.logits_dtype)],
                progress=show_progress(eval_cfg.progress) and is_main_process(),
            )
            new = [
                r
                for i, s in zip(chunk, all_scores)
                for r in checkpoint_set_records(
                    ids[i], metas[i], provenance[i], eval_set, s, list(config), precision, head_record(heads[i], plan.info)
                )
            ]
            if is_main_process():
                write_set_results(out, new, [ids[i] for i in chunk], eval_set.name, all_scores, bool(eval_cfg.save_logits))
            records.extend(new)
        del models
    return records


def write_set_results(out: Path, new: list[dict], ids: list[str], set_name: str, all_scores: list[SetScores], logits: bool) -> None:
    """The main process's part: log each new record, append them to out/results.jsonl, save the logits if asked."""
    for record in new:
        log.info(
            "%s on %s: top1 %.4f (n=%d, skipped %d)", record["model_id"], record["dataset"], record["top1"], record["n"], record["skipped"]
        )
    append_records(out, new)
    if logits:
        for model_id, scores in zip(ids, all_scores):
            save_logits(out, model_id, set_name, scores.logits, scores.labels)


def with_head(classifier: ImageClassifier, head: tuple | None) -> ImageClassifier:
    """The classifier with `head` = (weight, bias, provenance) in place of its own (None: its own)."""
    if head is not None:
        weight, bias, _ = head
        classifier.head = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(classifier.head.weight.device)
        with torch.no_grad():
            classifier.head.weight.copy_(weight)
            classifier.head.bias.copy_(bias)
    return classifier.eval()


def head_record(head: tuple | None, info: datasets.ClassInfo) -> dict | None:
    """The records' fields of a replaced head: its provenance, and the classes it scores (the dataset's)."""
    return None if head is None else {**head[2], "classes": info.classes_id}


def run(cfg: Any) -> list[dict]:
    """The `python -m eval` task (wrapped by models.cli.stage_entry)."""
    from models.cli import output_dir, overrides
    from models.evaluate import resolve_device

    device = init_distributed(resolve_device(cfg.device))
    chosen = {o.lstrip("+~").split("=")[0] for o in overrides()}
    chose_model = bool(chosen & {"model", "model.arch"})
    chose_foundation = bool(chosen & {"model", "model.pretrained"})
    return evaluate_checkpoints(
        cfg.checkpoints,
        cfg.data,
        cfg.eval,
        output_dir(),
        device,
        overrides(),
        expected_arch=cfg.model.arch if chose_model else None,
        chosen_foundation=str(cfg.model.pretrained) if chose_foundation and cfg.model.pretrained else None,
    )
