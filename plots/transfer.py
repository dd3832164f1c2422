"""`python -m plots.transfer --runs runs/transfer --out results/transfer`: the transfer table, its figure and findings.

Reads the eval runs of `python -m pipeline transfer` (`<runs>/eval/on_<task>/`, `eval.head=auto`: each model with its
own head where it was fine-tuned on the task, a zero-shot head elsewhere) and writes
- `transfer_table.csv` and `.md`: top-1 (%) on each task's photo test set with its 95% interval half-width (normal
  approximation), for the zero-shot model, each fine-tuned task's best model (by held-out accuracy on its own task),
  and the soups across tasks; `seen_avg` is the mean over the fine-tuned tasks;
- `findings.json`: each finding as the difference of two rows with a paired bootstrap 95% interval over test images
  (plots.stats.bootstrap_ci), and whether it holds in miniature (plots.findings.holds);
- `fig_transfer.png`: the table as bars with their intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from models.atomic import write_text_atomic
from models.errors import UserError
from models.logits import LOGITS_DIR, load_logits
from models.results import load_results
from plots.findings import comparison
from plots.stats import accuracy_half_width, bootstrap_ci

ZEROSHOT = "zeroshot"
BEST_INDIVIDUAL = "best_individual"  # the per-task best with the highest held-out accuracy on the unseen task
SEEN_AVG = "seen_avg"
SOUP_ROWS = ("uniform_soup", "greedy_soup", "model_stock", "task_arithmetic")  # the soups stage's run names
LABELS = {
    ZEROSHOT: "Zero-shot",
    "uniform_soup": "Uniform soup across tasks",
    "greedy_soup": "Greedy soup across tasks",
    "model_stock": "Model Stock across tasks",
    "task_arithmetic": "Task arithmetic",
}
ABSTRACT = "model soups 'improve zero-shot performance on new downstream tasks' (abstract), over the fine-tuned models"
AGAINST_ZEROSHOT = "the abstract read against the foundation itself: fine-tunes elsewhere, souped, beat the zero-shot model on a new task"
ILHARCO = "Ilharco et al. 2023: a sum of task vectors keeps most, not all, of each task's fine-tuned accuracy"


@dataclasses.dataclass(frozen=True)
class TransferFinding:
    name: str
    where: str  # unseen: the task no fine-tune sees | seen: the mean over the fine-tuned tasks
    a: str  # table rows
    b: str
    claim: str  # plots.findings.holds: greater | less | close | not_less
    reference: str


FINDINGS = (
    TransferFinding("greedy_vs_best_unseen", "unseen", "greedy_soup", BEST_INDIVIDUAL, "greater", ABSTRACT),
    TransferFinding("uniform_vs_best_unseen", "unseen", "uniform_soup", BEST_INDIVIDUAL, "greater", ABSTRACT),
    TransferFinding("model_stock_vs_best_unseen", "unseen", "model_stock", BEST_INDIVIDUAL, "greater", ABSTRACT),
    TransferFinding("task_arithmetic_vs_best_unseen", "unseen", "task_arithmetic", BEST_INDIVIDUAL, "greater", ABSTRACT),
    TransferFinding("greedy_vs_zeroshot_unseen", "unseen", "greedy_soup", ZEROSHOT, "greater", AGAINST_ZEROSHOT),
    TransferFinding("uniform_vs_zeroshot_unseen", "unseen", "uniform_soup", ZEROSHOT, "greater", AGAINST_ZEROSHOT),
    TransferFinding("uniform_vs_own_best_seen", "seen", "uniform_soup", "own_best", "less", ILHARCO),
    TransferFinding(
        "task_arithmetic_vs_zeroshot_seen",
        "seen",
        "task_arithmetic",
        ZEROSHOT,
        "greater",
        "Ilharco et al. 2023: adding task vectors improves on the zero-shot model",
    ),
)


def task_of(classes: str) -> str:
    """The task of a class-list id (`world-v5:digits` -> digits; a suite's own id is its own task)."""
    return str(classes).split(":")[-1]


def row_models(records: pd.DataFrame, unseen: str) -> dict[str, dict[str, str]]:
    """Row -> {task: model_id} of the model that row shows on each task.

    `own_best` is each fine-tuned task's best model on that task, `best_<task>` that model on every task, and
    `best_individual` the one of them with the best held-out accuracy on the unseen task (the data the greedy soup
    selects on). The zero-shot model and the soups are one model on every task."""
    records = records.assign(task=records["classes"].map(task_of))
    tasks = sorted(records["task"].unique())
    heldout = records[records["role"] == "heldout"]
    own = heldout[(heldout["kind"] == "individual") & (heldout["head"] == "own")]
    if own.empty:
        raise UserError("no fine-tuned model scored with its own head: run the transfer pipeline's eval steps (eval.head=auto)")
    best = {
        task: group.sort_values(["top1", "model_id"], ascending=[False, True], kind="stable")["model_id"].iloc[0]
        for task, group in own.groupby("task")
    }
    rows: dict[str, dict[str, str]] = {}
    zeroshot = sorted(records.loc[records["kind"] == ZEROSHOT, "model_id"].unique())
    if zeroshot:
        rows[ZEROSHOT] = dict.fromkeys(tasks, zeroshot[0])
    rows["own_best"] = dict(best)
    for task, model_id in best.items():
        rows[f"best_{task}"] = dict.fromkeys(tasks, model_id)
    on_unseen = heldout[heldout["task"] == unseen].set_index("model_id")["top1"]
    if set(best.values()) <= set(on_unseen.index):
        chosen = max(sorted(best.values()), key=lambda m: float(on_unseen[m]))
        rows[BEST_INDIVIDUAL] = dict.fromkeys(tasks, chosen)
    for soup in SOUP_ROWS:
        found = sorted(m for m in records.loc[records["kind"] == "soup", "model_id"].unique() if m.split("/")[-1] == soup)
        if found:
            rows[soup] = dict.fromkeys(tasks, found[0])
    return rows


def transfer_table(records: pd.DataFrame, rows: Mapping[str, Mapping[str, str]], tasks: Sequence[str], seen: Sequence[str]) -> pd.DataFrame:
    """Top-1 (%) of each row on each task's test set (role id) with the half-width of its 95% interval (pp)."""
    test = records[records["role"] == "id"].assign(task=records["classes"].map(task_of)).set_index(["model_id", "task"])
    table = {}
    for row, models in rows.items():
        cells: dict[str, float] = {}
        top1, n = [], []
        for task in tasks:
            key = (models.get(task), task)
            found = key in test.index
            cells[task] = 100 * float(test.loc[key, "top1"]) if found else math.nan
            cells[f"{task}_ci95"] = 100 * accuracy_half_width([test.loc[key, "top1"]], [test.loc[key, "n"]]) if found else math.nan
            if task in seen and found:
                top1.append(float(test.loc[key, "top1"]))
                n.append(int(test.loc[key, "n"]))
        complete = len(top1) == len(seen)
        cells[SEEN_AVG] = 100 * float(np.mean(top1)) if complete else math.nan
        cells[f"{SEEN_AVG}_ci95"] = 100 * accuracy_half_width(top1, n) if complete else math.nan
        table[row] = cells
    return pd.DataFrame.from_dict(table, orient="index").round(2)


def row_label(row: str, models: Mapping[str, str]) -> str:
    if row == "own_best":
        return "Each task's best, own head"
    if row == BEST_INDIVIDUAL:
        return f"Best individual for the unseen task ({next(iter(models.values()))})"
    if row.startswith("best_"):
        return f"Best on {row.removeprefix('best_')} ({next(iter(models.values()))})"
    return LABELS.get(row, row)


def to_markdown(table: pd.DataFrame, rows: Mapping[str, Mapping[str, str]]) -> str:
    columns = list(table.columns)
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row, values in table.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.2f}" for v in values]
        lines.append(f"| {row_label(str(row), rows[str(row)])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def correctness(runs: Path, task: str, model_ids: Sequence[str]) -> np.ndarray:
    """[n, models] 0/1 correctness on the task's test set from the eval run's saved logits (same examples, same order)."""
    folder = runs / "eval" / f"on_{task}" / LOGITS_DIR
    columns, labels = [], None
    for model_id in model_ids:
        files = sorted((folder / model_id).glob("*.safetensors"))
        test = [f for f in files if f.stem != "heldout"]
        if len(test) != 1:
            raise UserError(f"{folder / model_id}: no saved test-set logits; run the transfer eval steps with eval.save_logits=true")
        logits, y = load_logits(test[0])
        if labels is not None and not np.array_equal(labels, y.numpy()):
            raise UserError(f"{folder}: the logits of {list(model_ids)} are not over the same examples")
        labels = y.numpy()
        columns.append(logits.numpy().argmax(axis=1) == labels)
    return np.stack(columns, axis=1).astype(np.float64)


def measure(finding: TransferFinding, runs: Path, rows: Mapping[str, Mapping[str, str]], tasks: Sequence[str], seed: int = 0) -> dict:
    """a − b (pp) on the unseen task, or on the mean over the seen tasks, with its paired bootstrap interval."""
    samples = {task: correctness(runs, task, [rows[finding.a][task], rows[finding.b][task]]) for task in tasks}

    def statistic(s: Mapping[str, np.ndarray]) -> float:
        return 100 * float(np.mean([s[t][:, 0].mean() - s[t][:, 1].mean() for t in tasks]))

    delta, lo, hi = bootstrap_ci(samples, statistic, seed=seed)
    values = [100 * float(np.mean([samples[t][:, i].mean() for t in tasks])) for i in (0, 1)]
    models = {
        f"{side}_model": rows[row] if row == "own_best" else rows[row][tasks[0]] for side, row in (("a", finding.a), ("b", finding.b))
    }
    found = comparison(finding.a, finding.b, values, delta, lo, hi, finding.claim)
    return {"name": finding.name, "on": list(tasks), **found, **models, "reference": finding.reference}


def figure(table: pd.DataFrame, rows: Mapping[str, Mapping[str, str]], tasks: Sequence[str], unseen: str):
    from plots.render import new_figure

    shown = [r for r in table.index if not str(r).startswith("best_") or r == BEST_INDIVIDUAL]
    fig, (ax,) = new_figure(width=11.5, height=5.5)
    width = 0.8 / len(shown)
    for i, row in enumerate(shown):
        x = np.arange(len(tasks)) + (i - (len(shown) - 1) / 2) * width
        values = [table.loc[row, t] for t in tasks]
        errors = [table.loc[row, f"{t}_ci95"] for t in tasks]
        ax.bar(x, values, width, yerr=errors, capsize=2, label=row_label(str(row), rows[str(row)]))
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n(unseen)" if t == unseen else t for t in tasks])
    ax.set_ylabel("Top-1 on the task's photo test set (%), 95% interval")
    ax.set_ylim(max(0.0, float(np.nanmin(table[list(tasks)].to_numpy())) - 10), 100)
    ax.set_title("Soups across tasks: own heads where fine-tuned, zero-shot heads elsewhere")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return fig


def write_transfer(runs: Path, out: Path, unseen: str) -> list[dict]:
    records = load_results(runs / "eval")
    if records.empty or "head" not in records:
        raise UserError(f"{runs / 'eval'}: no eval records with eval.head; run `python -m pipeline transfer` first")
    rows = row_models(records, unseen)
    tasks = sorted({task_of(c) for c in records["classes"]} - {unseen}) + [unseen]
    seen = [t for t in tasks if t != unseen]
    table = transfer_table(records, rows, tasks, seen)
    findings = []
    for finding in FINDINGS:
        if finding.a in rows and finding.b in rows:
            findings.append(measure(finding, runs, rows, [unseen] if finding.where == "unseen" else seen))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "transfer_table.csv", table.to_csv(float_format="%.2f", na_rep="", index_label="row"))
    write_text_atomic(out / "transfer_table.md", to_markdown(table, rows))
    about = {"unseen_task": unseen, "seen_tasks": seen, "rows": rows, "findings": findings}
    write_text_atomic(out / "findings.json", json.dumps(about, indent=1) + "\n")
    from plots.render import save_figure

    save_figure(figure(table, rows, tasks, unseen), out, "fig_transfer", ["png"])
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the transfer experiment's runs folder (runs/transfer)")
    parser.add_argument("--out", required=True, help="folder for transfer_table.{csv,md}, findings.json, fig_transfer.png")
    parser.add_argument("--unseen", default="letters_nz", help="the task no fine-tune sees")
    args = parser.parse_args(argv)
    try:
        findings = write_transfer(Path(args.runs), Path(args.out), args.unseen)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for f in findings:
        print(f"{f['name']}: {f['delta_pp']:+.2f} pp [{f['ci95'][0]:+.2f}, {f['ci95'][1]:+.2f}] holds={f['holds']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
