"""The record-driven outputs: main_table.{md,tex,csv} and the figures that need only records (1, 2, 6)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from models.atomic import write_text_atomic
from models.errors import UserError
from models.results import json_lines
from plots import figures
from plots.inputs import preferred_shift_order, shift_suites
from plots.methods import table_rows
from plots.render import save_figure
from plots.table import (
    AVG,
    ID,
    SetNames,
    at_chance,
    avg_column,
    chance_levels,
    ci_half_widths,
    individual_labels,
    individual_note,
    main_table,
    model_accuracies,
    row_label,
    set_names,
    to_csv,
    to_latex,
    to_markdown,
    to_percent,
)

log = logging.getLogger(__name__)

TRAJECTORY_FILE = "greedy_trajectory.jsonl"
PAPER_SUITE_ID = "ImageNet"  # the paper's experiment is the one whose id set is ImageNet


def with_paper(table: pd.DataFrame, paper_csv: str | os.PathLike | None, sets: SetNames) -> pd.DataFrame:
    """On the paper's experiment, add the published `paper_id` and `paper_avg_shifts` beside ours (percent)."""
    if sets.id != PAPER_SUITE_ID or not paper_csv or not Path(paper_csv).exists():
        return table
    paper = pd.read_csv(paper_csv).set_index("method")
    missing = {ID, AVG} - set(paper.columns)
    if missing:
        raise UserError(f"{paper_csv}: lacks columns {sorted(missing)}")
    joined = table.join(paper[[ID, AVG]].rename(columns={ID: "paper_id", AVG: "paper_avg_shifts"}), how="outer")
    # Rows the paper has and we lack stay, with our cells empty, so the whole published table is in view.
    rows = table_rows()
    order = [row for row in rows if row in joined.index] + [row for row in joined.index if row not in rows]
    joined = joined.loc[order]
    joined.index.name = "method"
    return joined


def with_baselines(table: pd.DataFrame, records: pd.DataFrame, sets: SetNames, models: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The percent table compared with chance and the zero-shot init: a `chance` row, `id_vs_zeroshot` (pp)
    and a `note` per row (at chance; how the best individual was chosen). Returns it and the one line that
    says which rows are at chance (None when none is)."""
    chance = chance_levels(records, sets)
    id_counts = (
        pd.to_numeric(records.loc[records["dataset"] == sets.id, "n"], errors="coerce").dropna() if sets.id else pd.Series(dtype=float)
    )
    guessing = at_chance(table, chance, int(id_counts.max()) if len(id_counts) else None)
    percent = to_percent(table)
    if chance.notna().any():
        percent.loc["chance"] = to_percent(chance.to_frame().T)[percent.columns].iloc[0]
    if "zeroshot" in table.index and ID in percent:
        percent["id_vs_zeroshot"] = ((table[ID] - table.loc["zeroshot", ID]) * 100).round(2)
        if "chance" in percent.index:
            percent.loc["chance", "id_vs_zeroshot"] = math.nan
    notes = {row: "at chance" for row in guessing}
    chosen = individual_note(models)
    for row in ("best_individual", "second_best_individual"):
        if chosen and row in percent.index:
            notes[row] = "; ".join(filter(None, [notes.get(row), chosen]))
    percent["note"] = [notes.get(row, "") for row in percent.index]
    line = None
    if guessing:
        line = (
            f"{len(guessing)} of {len(table)} rows are at chance on {sets.id} ({', '.join(guessing)}; chance {100 * chance[ID]:.1f}%): "
            + ("these models cannot do this task." if len(guessing) == len(table) else "those models cannot do this task.")
        )
    return percent, line


def write_table(records: pd.DataFrame, out: Path, paper_csv: str | None) -> tuple[pd.DataFrame, SetNames, dict[str, str]]:
    sets = set_names(records, preferred_shift_order(), shift_suites())
    models = model_accuracies(records, sets)
    table, picked = main_table(models, sets)
    if table.empty:
        raise UserError("results: no record matches a table row (kinds zeroshot, lp, individual, or a soup's model_id)")
    percent, chance_line = with_baselines(table, records, sets, models)
    table = with_paper(percent.join(ci_half_widths(records, picked, sets)), paper_csv, sets)
    average = avg_column(sets)
    table = table[[c for c in table.columns if c != "note"] + ["note"]]  # the words last
    table = table.rename(columns={AVG: average, f"{AVG}_ci95": f"{average}_ci95"})
    relabelled = f"; {', '.join(sets.relabels)}: {sets.id} under those labels" if sets.relabels else ""
    missing = f" only (no records for {', '.join(sets.missing_shifts)})" if sets.missing_shifts else ""
    caption = (
        f"Top-1 accuracy (%). Held-out: {sets.heldout}; id: {sets.id}{relabelled}; {average}: mean over {', '.join(sets.shifts)}{missing}; "
        "*_ci95: half-width of the 95% interval (pp); chance: always guessing the most frequent class; "
        "id_vs_zeroshot: id accuracy minus the zero-shot init's (pp)."
    )
    none_chosen = individual_note(models) if "best_individual" not in picked and individual_note(models) else None
    footer = "".join(f"\n{line}\n" for line in (chance_line, none_chosen) if line)
    labels = individual_labels(models)
    write_text_atomic(out / "main_table.md", to_markdown(table, picked, labels) + footer)
    write_text_atomic(out / "main_table.tex", to_latex(table, picked, caption, labels))
    write_text_atomic(out / "main_table.csv", to_csv(table))
    write_text_atomic(out / "main_table_models.json", json.dumps(picked, indent=1, sort_keys=True) + "\n")
    log.info("wrote %s/main_table.{md,tex,csv} (%d rows)", out, len(table))
    if chance_line:
        print(f"warning: {chance_line}")
    return models, sets, picked


PUBLISHED_NOTES = ("label", "checked_against")  # columns of a published table that are not accuracies


def published_table_path(beside: str, results_dir: str | os.PathLike) -> Path:
    """`vit_g14` (a name) -> results/paper/vit_g14_table.csv; anything else is a path to such a CSV."""
    path = Path(beside) if beside.endswith(".csv") else Path(results_dir) / "paper" / f"{beside}_table.csv"
    if not path.is_file():
        raise UserError(f"plots.beside={beside}: {path} not found; pass a name under results/paper/ (e.g. vit_g14) or a CSV path")
    return path


def beside_table(ours: pd.DataFrame, picked: dict[str, str], published: pd.DataFrame, source: str) -> pd.DataFrame:
    """The published rows, then ours, in the published table's columns (percent). Rows are labelled by origin."""
    if "method" not in published.columns:
        raise UserError(
            f"{source}: no 'method' column; a published table has method, accuracy columns and optional {list(PUBLISHED_NOTES)}"
        )
    published = published.set_index("method")
    columns = [c for c in published.columns if c not in PUBLISHED_NOTES]
    labels = published["label"] if "label" in published else pd.Series(published.index, index=published.index)
    rows = [pd.Series(published.loc[m, columns].astype(float).values, index=columns, name=f"paper: {labels[m]}") for m in published.index]
    rows += [
        pd.Series(ours.loc[m].reindex(columns).astype(float).values, index=columns, name=f"ours: {row_label(m, picked)}")
        for m in ours.index
    ]
    table = pd.DataFrame(rows)
    table.index.name = "method"
    return table


def write_beside(models: pd.DataFrame, sets: SetNames, picked: dict[str, str], published_csv: Path, out: Path) -> str:
    """Write `main_table_beside_<name>.{md,csv}` and return the markdown (the caller prints it)."""
    table, _ = main_table(models, sets)
    try:
        published = pd.read_csv(published_csv)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{published_csv}: not a CSV table ({err})") from None
    joined = beside_table(to_percent(table), picked, published, str(published_csv))
    stem = f"main_table_beside_{published_csv.stem.removesuffix('_table')}"
    markdown = to_markdown(joined, {})
    write_text_atomic(out / f"{stem}.md", markdown)
    write_text_atomic(out / f"{stem}.csv", to_csv(joined))
    return markdown


def read_trajectory(path: Path) -> pd.DataFrame:
    """The soups stage's greedy_trajectory.jsonl -> candidate, candidate_heldout, tried_heldout, soup_heldout, accepted."""
    fields = {
        "ingredient": "candidate",
        "ingredient_heldout_top1": "candidate_heldout",
        "heldout_top1": "tried_heldout",
        "soup_heldout_top1": "soup_heldout",
        "accepted": "accepted",
    }
    rows = []
    for number, row in json_lines(path):
        missing = [k for k in fields if k not in row]
        if missing:
            raise UserError(f"{path}:{number}: trajectory line lacks {missing}; was it written by `python -m soups soup=greedy`?")
        rows.append({new: row[old] for old, new in fields.items()})
    trajectory = pd.DataFrame(rows)
    trajectory["tried_heldout"] = pd.to_numeric(trajectory["tried_heldout"], errors="coerce")  # None: stopped early
    return trajectory


def greedy_trajectory_file(records: pd.DataFrame) -> Path | None:
    """The trajectory beside the greedy soup's records (the latest such run)."""
    if "source" not in records:
        return None
    sources = records.loc[records["kind"] == "greedy_soup", "source"].dropna().unique()
    paths = [Path(s).parent / TRAJECTORY_FILE for s in sorted(sources)]
    paths = [p for p in paths if p.exists()]
    return paths[-1] if paths else None


def record_figures(
    records: pd.DataFrame, results_root: Path, models: pd.DataFrame, sets: SetNames, out: Path, formats: Sequence[str], which: Sequence[str]
) -> list[str]:
    """Draw figures 1, 2 (trajectory) and 6 where the records allow; return what was skipped and why."""
    skipped = []
    if "fig1" in which:
        if models[[ID, AVG]].notna().all(axis=1).any():
            save_figure(figures.fig1_accuracy_vs_robustness(models, sets), out, "fig1_accuracy_vs_robustness", formats)
        else:
            skipped.append("fig1: no model has both id and every shift")
    if "greedy" in which:
        path = greedy_trajectory_file(records)
        if path is not None:
            trajectory = read_trajectory(path)
            save_figure(figures.fig2_greedy_trajectory(trajectory, sets), out, "fig2_greedy_trajectory", formats)
        else:
            skipped.append(f"fig2_greedy_trajectory: no {TRAJECTORY_FILE} beside greedy_soup records under {results_root}")
    if "wise_ft" in which:
        if models["alpha"].notna().sum() >= 2:
            save_figure(figures.fig6_wise_ft(models, sets), out, "fig6_wise_ft", formats)
        else:
            skipped.append("fig6_wise_ft: fewer than 2 WiSE-FT records")
    return skipped


FINDINGS_FILE = "findings.json"


def write_findings(
    results_root: Path, picked: dict[str, str], sets: SetNames, out: Path, formats: Sequence[str], models: pd.DataFrame | None = None
) -> list[str]:
    """findings.json (the paper's findings with paired-bootstrap 95% intervals) and the reliability diagram,
    from the per-example logits saved under `results_root`; return what was skipped and why. `models`
    (plots.table.model_accuracies) names the WiSE-FT row's endpoints."""
    from models.logits import find_logits
    from plots.findings import compute_findings, reliability_figure, to_markdown

    files = find_logits(results_root)
    if not files:
        return [f"findings: no per-example logits under {results_root} (run eval and soups with eval.save_logits=true)"]
    about = {}
    if models is not None and "wise_ft" in picked and "wise_ft_to" in models:
        row = models.loc[picked["wise_ft"]]
        about["wise_ft"] = {"wise_ft_from": row["wise_ft_from"], "wise_ft_to": row["wise_ft_to"], "wise_ft_alpha": row["alpha"]}
    findings, skipped = compute_findings(files, picked, sets, about=about)
    if findings:
        write_text_atomic(out / FINDINGS_FILE, json.dumps(findings, indent=1) + "\n")
        write_text_atomic(out / "findings.md", to_markdown(findings))
        log.info("wrote %s/%s (%d findings)", out, FINDINGS_FILE, len(findings))
    figure = reliability_figure(files, picked, sets)
    if figure is not None:
        save_figure(figure, out, "fig_reliability", formats)
    return skipped
