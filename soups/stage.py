"""The soups stage: resolve and check ingredients, run the chosen method, evaluate, write outputs.

Outputs in the run folder, all written after every computation succeeded (so a failure leaves none):
- `model.safetensors` (weight-space methods), metadata listing every ingredient (path, sha256, weight);
- `results.jsonl`: one record per (model, set), `kind` naming the method's row of the main table;
- method files: `greedy_trajectory.jsonl`, `learned_weights.json`, `model_stock_ratios.json`, ...;
- `predictions.safetensors` for ensembles (averaged logits, float16, and labels per set);
- with `eval.save_logits=true`, `logits/<model_id>/<set>.safetensors` for every candidate (models/logits.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import datasets
from models.atomic import atomic_path, write_text_atomic
from models.checkpoint import CheckpointMeta, save_checkpoint, sha256_prefix
from models.cli import DONE_FILE, RUN_CONFIG_FILE, identity_config, without_ignored
from models.errors import UserError
from models.evaluate import count_correct, resolve_device
from models.heads import TASK_HEADS, head_for, image_tower
from models.logits import LOGITS_DIR, load_logits, save_logits
from models.results import RESULTS_FILE, append_records, read_records, set_records
from soups.checks import check_across_tasks, check_compatible, check_fits_architecture
from soups.config import soup_params
from soups.ingredients import architecture_specs, describe, resolve_ingredients
from soups.methods import Candidate, SoupContext, SoupOutcome, all_methods, get_method
from soups.scoring import EvalSetsFn, Scorer, selected_set_names
from soups.streaming import BackgroundHashes

log = logging.getLogger(__name__)

CHECKPOINT = "model.safetensors"
PREDICTIONS = "predictions.safetensors"


def loader_kwargs(eval_cfg: Any) -> dict[str, Any]:
    """The eval protocol's loader settings, as keyword arguments of `models.evaluate.iter_logits`."""
    return {
        "batch_size": int(eval_cfg.batch_size),
        "workers": int(eval_cfg.workers),
        "amp": eval_cfg.amp,
        "skip_bad_images": bool(eval_cfg.skip_bad_images),
    }


@dataclasses.dataclass
class AcrossTasks:
    """A soup of ingredients fine-tuned on different tasks (soup.across_tasks): the one head it is scored with on
    the stage's data and written with (the mean head of the ingredients of that task, else a zero-shot head), its
    provenance, each task's ingredients (the checkpoint records them, so `eval.head=auto` finds each task's own
    head), and the metadata of a model of the stage's classes."""

    head: dict[str, torch.Tensor]
    provenance: dict[str, Any]
    task_heads: dict[str, list[dict[str, str]]]
    meta: CheckpointMeta


def across_tasks(ingredients: list, init: Any, data_cfg: Any, sha256: Callable[[Path], str]) -> AcrossTasks:
    """Check that the ingredients (and θ0) share one foundation and one image tower, and pick the head."""
    check_across_tasks([ing.spec() for ing in ingredients + ([init] if init is not None else [])])
    info = datasets.class_info(data_cfg)
    task_heads: dict[str, list[dict[str, str]]] = {}
    for ing in ingredients:
        task_heads.setdefault(ing.meta.classes, []).append({"path": ing.name, "sha256": sha256(ing.path)})
    first = ingredients[0].meta
    soup = dataclasses.replace(first, classes="", hparams={TASK_HEADS: task_heads})  # classes "": never its "own" head
    weight, bias, provenance = head_for(soup, info, "auto", "ingredients")
    meta = dataclasses.replace(first, num_classes=len(info.classnames), classes=info.classes_id)
    log.info("soup across %d tasks, scored on %s with the %s head", len(task_heads), info.classes_id, provenance["head"])
    return AcrossTasks({"head.weight": weight, "head.bias": bias}, provenance, task_heads, meta)


def build_context(cfg: Any, eval_sets_fn: EvalSetsFn | None = None) -> SoupContext:
    """Resolve and check the ingredients (and the init, if any) before anything is computed."""
    params = soup_params(cfg.soup)  # an unknown method or a bad option fails before any file is read
    method = get_method(params.name)
    if params.across_tasks and not method.across_tasks:
        able = sorted(name for name, m in all_methods().items() if m.across_tasks)
        raise UserError(f"soup.across_tasks: {params.name} does not soup across tasks; use one of {', '.join(able)}")
    ingredients = resolve_ingredients(cfg.ingredients, cfg.model)
    init = None
    if params.init:
        init_path = Path(params.init)
        if not init_path.exists():
            raise UserError(f"soup.init: {init_path}: no such checkpoint")
        init = describe(init_path, cfg.model)
    first = ingredients[0]
    across = None
    hashes = BackgroundHashes([ing.path for ing in ingredients] + ([init.path] if init is not None else []))
    try:
        if params.across_tasks:
            across = across_tasks(ingredients, init, cfg.data, hashes.get)
        else:
            check_compatible([ing.spec() for ing in ingredients])
            if init is not None:
                check_compatible([first.spec(), init.spec()])
        check_fits_architecture(first.spec(), architecture_specs(first.meta.arch, first.meta.num_classes))
    except BaseException:
        hashes.close()
        raise
    device = resolve_device(str(cfg.device))
    evaluate = params.evaluate
    names = selected_set_names(cfg.data, cfg.eval.sets) if evaluate else [cfg.data.heldout]
    sources = [(ing.name, ing.meta) for ing in ingredients + ([init] if init is not None else [])]
    datasets.check_heldout_split(cfg.data, sources, eval_sets_fn)
    meta = across.meta if across is not None else first.meta
    head = across.head if across is not None else None

    def make_scorer() -> Scorer:
        return Scorer(meta, cfg.data, names, device, loader_kwargs(cfg.eval), eval_sets_fn, cfg.eval if evaluate else None, head)

    seed = 0 if cfg.seed is None else int(cfg.seed)
    return SoupContext(ingredients, params, str(cfg.run_name), seed, device, make_scorer, init, hashes, across=across)


Logits = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # (model_id, set) -> (logits, labels)


@dataclasses.dataclass
class Scored:
    """One candidate's score on one set: what its records (models.results.set_records) are made of."""

    candidate: Candidate
    eval_set: Any
    correct: int
    n: int
    relabelled: dict[str, Any]  # the id set's other labellings (ImageNetReaL, ImageNetMultilabel), scored in the same pass


def evaluate_outcome(
    ctx: SoupContext, outcome: SoupOutcome, keep_logits: bool = False, recorded: RecordedLogits | None = None
) -> tuple[list[Scored], Logits]:
    """(correct, n) of every candidate on every set, and the logits of the ensembles (of every candidate
    with `keep_logits`). `recorded`: an eval run's saved logits, which stand in for the ensemble members'
    forward passes (`eval.logits_from`)."""
    scorer = ctx.scorer
    chunk = ctx.params.eval_chunk
    scored: list[Scored] = []
    kept: Logits = {}
    with_state = [c for c in outcome.candidates if c.state is not None]
    for eval_set in scorer.sets:
        for start in range(0, len(with_state), chunk):
            group = with_state[start : start + chunk]
            for candidate, scores in zip(group, scorer.set_scores([c.state for c in group], eval_set, keep_logits)):
                scored.append(Scored(candidate, eval_set, scores.correct, scores.n, scores.relabelled))
                if keep_logits:
                    kept[(candidate.model_id, eval_set.name)] = (scores.logits, scores.labels)
        for candidate in (c for c in outcome.candidates if c.state is None):
            logits, labels, skipped = _ensemble_logits(ctx, candidate.members or [], eval_set, chunk, recorded)
            predicted = logits.argmax(dim=-1)
            relabelled = {r.name: r.score(predicted, labels, skipped) for r in eval_set.relabellings}
            scored.append(Scored(candidate, eval_set, count_correct(logits, labels), len(labels), relabelled))
            kept[(candidate.model_id, eval_set.name)] = (logits, labels)
    return scored, kept


class RecordedLogits:
    """The float32 logits an eval run saved (`eval.save_logits=true eval.logits_dtype=float32`), for the
    members of an ensemble: the same forward pass, so the same floats, without running it again.

    A member's file is used only when the eval run evaluated the same data config, at the same
    precision, and its record of that set names this checkpoint's sha256; otherwise the member is
    run (and the log says how many were)."""

    def __init__(self, folder: str | Path, data: dict[str, Any], precision: str, sha256: Callable[[Path], str]):
        self.folder, self.sha256 = Path(folder), sha256
        run_config = self.folder / RUN_CONFIG_FILE
        if not (self.folder / DONE_FILE).exists() or not run_config.exists():
            raise UserError(
                f"eval.logits_from: {self.folder} is not a finished eval run (no {DONE_FILE}); run the eval stage first or set it to null"
            )
        recorded = without_ignored(json.loads(run_config.read_text()))
        same_data = recorded.get("data") == data  # as run_config.json writes it (models.cli.identity_config)
        self.model_ids: dict[tuple[str, str, int], str] = {}  # (sha256, set, n) -> the eval run's model_id
        if same_data and (recorded.get("eval") or {}).get("logits_dtype") == "float32":
            for record in read_records(self.folder / RESULTS_FILE):
                sha = (record.get("checkpoint") or {}).get("sha256")
                if sha and record.get("precision") == precision:
                    self.model_ids[(sha, record["dataset"], record["n"])] = record["model_id"]

    def get(self, path: Path, dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        model_id = self.model_ids.get((self.sha256(path), dataset, n))
        if model_id is None:
            return None
        file = self.folder / LOGITS_DIR / model_id / f"{dataset}.safetensors"
        return load_logits(file) if file.exists() else None


def _ensemble_logits(
    ctx: SoupContext, members: Sequence[int], eval_set, chunk: int, recorded: RecordedLogits | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The members' average logits on a set, the labels, and the paths of unreadable images skipped.
    Members with `recorded` logits are read; the others are run, `chunk` at a time (one decode per chunk)."""
    n = len(eval_set.dataset)
    found = {i: recorded.get(ctx.ingredients[i].path, eval_set.name, n) for i in members} if recorded is not None else {}
    member_logits = {i: x for i, (x, _) in ((i, f) for i, f in found.items() if f is not None)}
    labels = next((y for x, y in (f for f in found.values() if f is not None)), None)
    missing = [i for i in members if i not in member_logits]
    if recorded is not None:
        log.info("ensemble on %s: %d of %d members read from %s", eval_set.name, len(member_logits), len(members), recorded.folder)
    skipped: list[str] = []
    for start in range(0, len(missing), chunk):
        group = missing[start : start + chunk]
        skipped = []  # each chunk decodes the whole set again; keep one chunk's list
        logits, labels = ctx.scorer.logits([ctx.load(i) for i in group], eval_set, skipped)
        member_logits.update(zip(group, logits))
    total = None
    for i in members:  # in member order, as one forward pass per member would sum them
        total = member_logits[i].clone() if total is None else total.add_(member_logits[i])
    return total / len(members), labels, skipped


def checkpoint_meta(ctx: SoupContext, outcome: SoupOutcome, cfg: Any) -> CheckpointMeta:
    first = ctx.across.meta if ctx.across is not None else ctx.ingredients[0].meta
    ingredients = [
        {"path": ing.name, "sha256": ctx.sha256(ing.path), "weight": w, "classes": ing.meta.classes}
        for ing, w in zip(ctx.ingredients, outcome.weights or [])
    ]
    if ctx.init is not None and outcome.init_weight is not None:
        ingredients.append({"path": ctx.init.name, "sha256": ctx.sha256(ctx.init.path), "weight": outcome.init_weight, "role": "init"})
    hparams = {
        "method": ctx.params.name,
        "soup_kind": outcome.kind,
        **outcome.hparams,
        "options": dataclasses.asdict(ctx.params),
    }
    if ctx.across is not None:  # each task's head: of the ingredients of that task the soup is made of
        kept = {ctx.ingredients[i].name for i in (outcome.members if outcome.members is not None else range(len(ctx.ingredients)))}
        task_heads = {classes: [e for e in entries if e["path"] in kept] for classes, entries in ctx.across.task_heads.items()}
        hparams.update(head=ctx.across.provenance, **{TASK_HEADS: {k: v for k, v in task_heads.items() if v}})
    kind = "wise_ft" if outcome.kind == "wise_ft" else "soup"
    return CheckpointMeta(
        arch=first.arch,
        pretrained=first.pretrained,
        num_classes=first.num_classes,
        classes=first.classes,
        kind=kind,
        hparams=hparams,
        ingredients=ingredients,
        activation=first.activation,
    )


def run_soup(cfg: Any, out: Path, config_overrides: Sequence[str] = (), eval_sets_fn: EvalSetsFn | None = None) -> SoupOutcome:
    ctx = build_context(cfg, eval_sets_fn)
    try:
        return _run(ctx, cfg, out, config_overrides)
    finally:
        if ctx.hashes is not None:
            ctx.hashes.close()


def _run(ctx: SoupContext, cfg: Any, out: Path, config_overrides: Sequence[str]) -> SoupOutcome:
    log.info("soup %s over %d ingredient(s) on %s", ctx.params.name, len(ctx.ingredients), ctx.device)
    outcome = get_method(ctx.params.name).run(ctx)
    if ctx.across is not None and outcome.checkpoint is not None:  # the image tower souped, the stage's head exactly
        outcome.checkpoint = {**image_tower(outcome.checkpoint), **ctx.across.head}
    keep_logits = bool(cfg.eval.save_logits)
    recorded = None
    if cfg.eval.logits_from and any(c.state is None for c in outcome.candidates):
        recorded = RecordedLogits(cfg.eval.logits_from, identity_config(cfg).get("data"), ctx.scorer.precision, ctx.sha256)
    scored, kept = evaluate_outcome(ctx, outcome, keep_logits, recorded) if ctx.params.evaluate else ([], {})
    ensembles = {c.model_id for c in outcome.candidates if c.state is None}
    predictions = {}
    for (model_id, dataset), (logits, labels) in kept.items():
        if model_id in ensembles:
            predictions[f"{model_id}/{dataset}/logits"] = logits.half()
            predictions[f"{model_id}/{dataset}/labels"] = labels

    # Everything is computed: write the outputs, checkpoint first so records can name its hash.
    checkpoint = None
    if outcome.checkpoint is not None:
        path = save_checkpoint(out / CHECKPOINT, outcome.checkpoint, checkpoint_meta(ctx, outcome, cfg))
        checkpoint = {"path": str(path), "sha256": sha256_prefix(path) if scored else ""}  # the hash is only for records
    for name, text in outcome.files.items():
        write_text_atomic(out / name, text)
    if predictions:
        with atomic_path(out / PREDICTIONS) as tmp:
            save_file({k: v.contiguous() for k, v in predictions.items()}, str(tmp))
    if keep_logits:
        dtype = getattr(torch, str(cfg.eval.logits_dtype))
        for (model_id, dataset), (logits, labels) in kept.items():
            save_logits(out, model_id, dataset, logits.to(dtype), labels)
    saved_alpha = outcome.hparams.get("alpha")
    records = []
    for one in scored:
        candidate, eval_set = one.candidate, one.eval_set
        owns_checkpoint = checkpoint is not None and (saved_alpha is None or candidate.extra.get("alpha") == saved_alpha)
        common = {
            "model_id": candidate.model_id,
            "kind": outcome.kind,
            "checkpoint": checkpoint if owns_checkpoint else None,
            "config": config_overrides,
            "method": ctx.params.name,
            "ingredients": len(ctx.ingredients),
            "precision": ctx.scorer.precision,
            **(ctx.across.provenance if ctx.across is not None else {}),
            **eval_set.provenance,
            **candidate.extra,
        }
        records += set_records(common, eval_set.name, eval_set.role, one.correct, one.n, one.relabelled)
        log.info("%s on %s: top1 %.4f", candidate.model_id, eval_set.name, one.correct / one.n)
    if records:
        append_records(out, records)
    return outcome
