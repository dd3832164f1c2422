"""The paper's main table (its CLIP ViT-B/32 table) from results records: pure functions over pandas tables.

Accuracies stay fractions inside; `to_percent` rounds to the published precision (percent, 2 decimals) at the edge.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import pandas as pd

from models.errors import UserError
from models.results import wide_table
from plots.methods import INDIVIDUAL_KIND, INIT_KINDS, WISE_FT_DEFAULT_ALPHA, WISE_FT_KIND, model_id_rows, style, table_rows, wise_ft_alpha
from plots.stats import accuracy_half_width

HELDOUT, ID, AVG = "heldout", "id", "avg_shifts"
RELABEL_ORDER = ("ImageNetReaL", "ImageNetMultilabel")  # the id set under other labels, in the paper's ViT-G table order


@dataclasses.dataclass(frozen=True)
class SetNames:
    """The dataset names that play each role in the records (e.g. ImageNet2p / ImageNet / five shifts)."""

    heldout: str | None
    id: str | None
    shifts: tuple[str, ...]
    relabels: tuple[str, ...] = ()  # role id_relabel: e.g. ImageNetReaL, ImageNetMultilabel
    missing_shifts: tuple[str, ...] = ()  # shifts of the suite (conf/data) without records: avg_shifts does not cover them


def avg_column(sets: SetNames) -> str:
    """What the shift average is called in a written table: `avg_shifts` only over every shift of the suite,
    else named for what it averages (`avg_3_of_5_shifts`)."""
    if not sets.missing_shifts:
        return AVG
    return f"avg_{len(sets.shifts)}_of_{len(sets.shifts) + len(sets.missing_shifts)}_shifts"


def _one(names: Sequence[str], role: str) -> str | None:
    if len(names) > 1:
        raise UserError(f"results: several datasets have role {role!r} ({', '.join(names)}); keep one experiment per results folder")
    return names[0] if names else None


def set_names(records: pd.DataFrame, preferred_order: Sequence[str] = (), suites: Sequence[Sequence[str]] = ()) -> SetNames:
    """Read the roles from the records; shifts in `preferred_order` first (the data config's order), then by name.
    `suites`: each data config's shift list; the one that holds every recorded shift names those missing."""
    by_role = {role: sorted(records.loc[records["role"] == role, "dataset"].unique()) for role in ("heldout", "id", "shift", "id_relabel")}
    rank = {name: i for i, name in enumerate(preferred_order)}
    shifts = sorted(by_role["shift"], key=lambda name: (rank.get(name, len(rank)), name))
    relabel_rank = {name: i for i, name in enumerate(RELABEL_ORDER)}
    relabels = sorted(by_role["id_relabel"], key=lambda name: (relabel_rank.get(name, len(relabel_rank)), name))
    suite = next((list(s) for s in suites if shifts and set(shifts) <= set(s)), list(shifts))
    missing = tuple(name for name in suite if name not in shifts)
    return SetNames(_one(by_role["heldout"], "heldout"), _one(by_role["id"], "id"), tuple(shifts), tuple(relabels), missing)


def model_accuracies(records: pd.DataFrame, sets: SetNames) -> pd.DataFrame:
    """One row per model_id: `kind`, `heldout`, `id`, each relabelling of id (ReaL, multilabel), each shift,
    `avg_shifts` (the unweighted mean of the shifts, NaN unless every shift is there), and `alpha` for WiSE-FT
    records. Fractions."""
    wide = wide_table(records)
    columns = {sets.heldout: HELDOUT, sets.id: ID}
    table = pd.DataFrame(index=wide.index)
    table["kind"] = wide["kind"]
    for name, column in list(columns.items()) + [(s, s) for s in (*sets.relabels, *sets.shifts)]:
        table[column] = wide[name] if name in wide else math.nan
    table[AVG] = table[list(sets.shifts)].mean(axis=1, skipna=False) if sets.shifts else math.nan
    alphas = (
        records.drop_duplicates("model_id", keep="last").set_index("model_id")["alpha"] if "alpha" in records else pd.Series(dtype=float)
    )
    table["alpha"] = [wise_ft_alpha(str(m), alphas.get(m)) if _is_wise_ft(m, k) else math.nan for m, k in zip(table.index, table["kind"])]
    # a WiSE-FT curve is one soups run (its α grid); its records name its endpoints (θ0 and the fine-tuned model)
    table["wise_ft_curve"] = [_ALPHA_SUFFIX.sub("", str(m)) if a == a else None for m, a in zip(table.index, table["alpha"])]
    latest = records.drop_duplicates("model_id", keep="last").set_index("model_id")
    for end in ("wise_ft_from", "wise_ft_to"):
        table[end] = [latest[end].get(m) if end in latest and a == a else None for m, a in zip(table.index, table["alpha"])]
    return table


_ALPHA_SUFFIX = re.compile(r"_?alpha[_=]?[0-9]*\.?[0-9]+$")


def _is_wise_ft(model_id: str, kind: str) -> bool:
    return kind == WISE_FT_KIND or str(model_id).startswith("wise_ft")


def method_mask(models: pd.DataFrame, row: str) -> pd.Series:
    """Models of one method row: the soups stage names the row in `kind`; a bare `model_id` (official files) also counts."""
    return (models["kind"] == row) | (models.index.to_series(index=models.index) == row)


def by_heldout(models: pd.DataFrame) -> pd.DataFrame:
    """Best held-out first; ties keep the records' order (stable sort), models without held-out last."""
    return models.sort_values(HELDOUT, ascending=False, kind="stable", na_position="last")


def individuals(models: pd.DataFrame) -> pd.DataFrame:
    return by_heldout(models[models["kind"] == INDIVIDUAL_KIND])


def pick_rows(models: pd.DataFrame) -> dict[str, str]:
    """Table row -> the model_id it shows (oracle is computed, not picked)."""
    picked: dict[str, str] = {}
    for kind, row in INIT_KINDS.items():
        inits = by_heldout(models[models["kind"] == kind])
        if len(inits):
            picked[row] = inits.index[0]
    pool = individuals(models)
    pool = pool[pool[HELDOUT].notna()]  # chosen on held-out: only among those with a record of it (individual_note)
    for row, position in (("best_individual", 0), ("second_best_individual", 1)):
        if len(pool) > position:
            picked[row] = pool.index[position]
    for row in model_id_rows():
        found = models[method_mask(models, row)]
        if len(found):
            picked[row] = by_heldout(found).index[0]
    wise = models[[_is_wise_ft(m, k) for m, k in zip(models.index, models["kind"])]]
    if len(wise):
        default = wise[(wise["alpha"] - WISE_FT_DEFAULT_ALPHA).abs() < 1e-9]
        picked["wise_ft"] = by_heldout(default if len(default) else wise).index[0]
    return picked


def individual_note(models: pd.DataFrame) -> str | None:
    """How the best individual was chosen, when not "by held-out among all": None when every individual has a
    held-out record (the row is what its label says)."""
    pool = individuals(models)
    have = int(pool[HELDOUT].notna().sum())
    if have == len(pool):
        return None
    if have == 0:
        return f"no individual has a held-out record: no best individual chosen ({len(pool)} individuals)"
    return f"chosen by held-out among the {have} of {len(pool)} individuals with a held-out record"


def individual_labels(models: pd.DataFrame) -> dict[str, str]:
    """Row labels that say how the best individuals were chosen, when not by held-out among all of them."""
    pool = individuals(models)
    have = int(pool[HELDOUT].notna().sum())
    if have in (0, len(pool)):
        return {}
    among = f"held-out, best of the {have} of {len(pool)} with a held-out record"
    return {"best_individual": f"Best individual ({among})", "second_best_individual": f"Second-best individual ({among})"}


def chance_levels(records: pd.DataFrame, sets: SetNames) -> pd.Series:
    """Per table column, the accuracy of always guessing the most frequent class (1 / classes on a balanced set),
    from the records' per-class counts; NaN where the records do not have them (the official wide files)."""
    columns = {sets.heldout: HELDOUT, sets.id: ID, **{s: s for s in (*sets.relabels, *sets.shifts)}}
    levels = pd.Series(math.nan, index=[HELDOUT, ID, *sets.relabels, *sets.shifts, AVG], dtype=float)
    if "per_class_n" in records:
        for name, column in columns.items():
            counts = [c for c in records.loc[records["dataset"] == name, "per_class_n"] if isinstance(c, list) and sum(c) > 0]
            if counts:
                levels[column] = max(counts[-1]) / sum(counts[-1])
    if sets.shifts:
        levels[AVG] = levels[list(sets.shifts)].mean(skipna=False)
    return levels


def at_chance(table: pd.DataFrame, chance: pd.Series, n_id: int | None) -> list[str]:
    """Rows whose id accuracy is not above chance by more than two standard errors of `n_id` guesses (or below it)."""
    level = chance.get(ID, math.nan)
    if not n_id or level != level:
        return []
    limit = level + 2 * math.sqrt(level * (1 - level) / n_id)
    return [row for row, value in table[ID].items() if value == value and value <= limit]


def oracle_row(models: pd.DataFrame, sets: SetNames) -> pd.Series | None:
    """Best individual on each set separately; its avg_shifts is the mean of the per-shift maxima."""
    pool = individuals(models)
    if pool.empty:
        return None
    row = pool[[HELDOUT, ID, *sets.relabels, *sets.shifts]].max()
    row[AVG] = row[list(sets.shifts)].mean(skipna=False) if sets.shifts else math.nan
    return row


def main_table(models: pd.DataFrame, sets: SetNames) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table (rows in the paper's order, where the data exists; fractions) and which model each row shows."""
    columns = [HELDOUT, ID, *sets.relabels, *sets.shifts, AVG]
    picked = pick_rows(models)
    rows = {}
    for row in table_rows():
        if row == "oracle":
            oracle = oracle_row(models, sets)
            if oracle is not None:
                rows[row] = oracle[columns]
        elif row in picked:
            rows[row] = models.loc[picked[row], columns]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "method"
    return table, picked


def to_percent(table: pd.DataFrame) -> pd.DataFrame:
    """Fractions -> percent with 2 decimals, the paper's precision."""
    return (table.astype(float) * 100).round(2)


# --- writers (strings; the caller writes them atomically) ---------------------------------------------------


def _cell(value: object) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.2f}"
        if isinstance(value, float)
        else str(value)
    )


def row_label(method: str, picked: dict[str, str], labels: dict[str, str] | None = None) -> str:
    label = (labels or {}).get(method, style(method).label)
    if method in picked and picked[method] != method:
        label += f" ({picked[method]})"
    return label


def to_markdown(table: pd.DataFrame, picked: dict[str, str], labels: dict[str, str] | None = None) -> str:
    header = ["Method", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for method, values in table.iterrows():
        lines.append("| " + " | ".join([row_label(method, picked, labels), *(_cell(v) for v in values)]) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def to_latex(table: pd.DataFrame, picked: dict[str, str], caption: str, labels: dict[str, str] | None = None) -> str:
    header = " & ".join(["Method", *(_tex_escape(str(c)) for c in table.columns)]) + r" \\"
    body = [" & ".join([_tex_escape(row_label(m, picked, labels)), *(_cell(v) for v in values)]) + r" \\" for m, values in table.iterrows()]
    return "\n".join(
        [
            r"% needs \usepackage{booktabs}",
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
            r"\toprule",
            header,
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            rf"\caption{{{_tex_escape(caption)}}}",
            r"\end{table}",
            "",
        ]
    )


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(float_format="%.2f", na_rep="")


def ci_half_widths(records: pd.DataFrame, picked: dict[str, str], sets: SetNames) -> pd.DataFrame:
    """Per picked row: the 95% interval half-widths (percentage points) of its `id` and `avg_shifts`
    accuracies from the records' top-1 and image counts (normal approximation; NaN without counts).
    Differences between two rows are judged in findings.json, by a paired bootstrap: far tighter."""
    latest = records.sort_values("time", kind="stable") if "time" in records else records
    latest = latest.drop_duplicates(["model_id", "dataset"], keep="last").set_index(["model_id", "dataset"])
    rows = {}
    for row, model_id in picked.items():
        cells = {}
        for column, names in ((f"{ID}_ci95", [sets.id]), (f"{AVG}_ci95", list(sets.shifts))):
            keys = [(model_id, name) for name in names]
            if names and all(k in latest.index for k in keys):
                found = latest.loc[keys]
                cells[column] = 100 * accuracy_half_width(found["top1"].to_numpy(), pd.to_numeric(found["n"]).to_numpy())
            else:
                cells[column] = math.nan
        rows[row] = cells
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"{ID}_ci95", f"{AVG}_ci95"]).round(2)
