"""The paper's findings, measured with 95% confidence: `findings.json` and the reliability diagram.

Each finding compares two table rows (plots.table.pick_rows: the best individual is the best by held-out)
on the per-example logits the eval and soups stages save with `eval.save_logits=true`
(models/logits.py). Its interval is a paired bootstrap over test images (plots.stats.bootstrap_ci):
`delta_pp` is a minus b in percentage points, `ci95` its 95% interval, and `holds` says whether the
interval supports the paper's claim (`claim`):
- `greater`: the interval lies above 0; `less`: below 0;
- `close`: the interval lies within +-CLOSE_PP (the paper: the greedy soup approaches the ensemble);
- `not_less`: the interval does not lie below 0 (the paper: soups do not improve calibration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from models.logits import load_logits
from plots.methods import style
from plots.render import new_figure
from plots.stats import bootstrap_ci, expected_calibration_error, reliability_bins, softmax_confidence
from plots.table import SetNames

CLOSE_PP = 0.5
N_BOOT = 1000
N_BINS = 15  # equal-mass bins for ECE and the reliability diagram
CALIBRATED = ("best_individual", "greedy_soup", "ensemble")  # the reliability diagram's rows


@dataclasses.dataclass(frozen=True)
class Finding:
    name: str
    metric: str  # top1_id | top1_avg_shifts | shift_gain_minus_id_gain | ece_id
    a: str  # table rows
    b: str
    claim: str  # greater | less | close | not_less
    paper: str  # what the paper found (ViT-B/32 unless said)


FINDINGS = (
    Finding("greedy_vs_best_id", "top1_id", "greedy_soup", "best_individual", "greater", "+0.64 pp (81.03 vs 80.39)"),
    Finding("greedy_vs_best_shifts", "top1_avg_shifts", "greedy_soup", "best_individual", "greater", "+2.92 pp (50.75 vs 47.83)"),
    Finding("uniform_vs_best_id", "top1_id", "uniform_soup", "best_individual", "less", "-0.42 pp (79.97 vs 80.39)"),
    Finding("uniform_vs_best_shifts", "top1_avg_shifts", "uniform_soup", "best_individual", "greater", "+3.62 pp (51.45 vs 47.83)"),
    Finding("greedy_soup_vs_ensemble_id", "top1_id", "greedy_soup", "ensemble", "close", "-0.16 pp (81.03 vs 81.19)"),
    Finding(
        "wise_ft_vs_best_shifts", "top1_avg_shifts", "wise_ft", "best_individual", "greater", "WiSE-FT (alpha 0.5) gains on every shift"
    ),
    Finding(
        "finetune_tradeoff",
        "shift_gain_minus_id_gain",
        "best_individual",
        "zeroshot",
        "less",
        "fine-tuning gains far less on the shifts than in distribution (CLIP, WiSE-FT)",
    ),
    Finding("ece_soup_vs_ensemble", "ece_id", "greedy_soup", "ensemble", "greater", "ensembles improve calibration, soups do not (App. J)"),
    Finding("ece_soup_vs_best", "ece_id", "greedy_soup", "best_individual", "not_less", "soups do not improve calibration (App. J)"),
)


def holds(claim: str, lo: float, hi: float) -> bool:
    if claim == "greater":
        return lo > 0
    if claim == "less":
        return hi < 0
    if claim == "close":
        return -CLOSE_PP <= lo and hi <= CLOSE_PP
    if claim == "not_less":
        return hi >= 0
    raise ValueError(f"unknown claim {claim!r}")


@dataclasses.dataclass
class Predictions:
    """Per example of one set: whether each model is right, and its softmax confidence ([n, models] each)."""

    correct: np.ndarray
    confidence: np.ndarray


def _accuracy_statistic(metric: str, id_set: str, shifts: tuple[str, ...]) -> Callable[[Mapping[str, np.ndarray]], float]:
    """The statistic of a top-1 finding over {set: [n, 2] correctness of (a, b)}, in pp."""

    def gap(x: np.ndarray) -> float:
        means = x.mean(axis=0)
        return 100 * float(means[0] - means[1])

    if metric == "top1_id":
        return lambda s: gap(s[id_set])
    if metric == "top1_avg_shifts":
        return lambda s: float(np.mean([gap(s[name]) for name in shifts]))
    if metric == "shift_gain_minus_id_gain":
        return lambda s: float(np.mean([gap(s[name]) for name in shifts])) - gap(s[id_set])
    raise ValueError(f"unknown metric {metric!r}")


def _ece_gap(s: Mapping[str, np.ndarray]) -> float:
    """ECE(a) - ECE(b) in pp from {"id": [n, 4] = (confidence a, correct a, confidence b, correct b)}."""
    x = s["id"]
    return 100 * (expected_calibration_error(x[:, 0], x[:, 1], N_BINS) - expected_calibration_error(x[:, 2], x[:, 3], N_BINS))


def measure(finding: Finding, preds: Mapping[str, Predictions], sets: SetNames, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """One finding from `preds` (set -> Predictions of the models [a, b])."""
    if finding.metric == "ece_id":
        p = preds[sets.id]
        samples = {"id": np.stack([p.confidence[:, 0], p.correct[:, 0], p.confidence[:, 1], p.correct[:, 1]], axis=1)}
        statistic = _ece_gap
        values = [100 * expected_calibration_error(p.confidence[:, i], p.correct[:, i], N_BINS) for i in (0, 1)]
    else:
        names = [sets.id] if finding.metric == "top1_id" else [sets.id, *sets.shifts]
        samples = {name: preds[name].correct for name in names}
        statistic = _accuracy_statistic(finding.metric, sets.id, sets.shifts)
        if finding.metric == "top1_id":
            values = [100 * float(preds[sets.id].correct[:, i].mean()) for i in (0, 1)]
        else:
            values = [100 * float(np.mean([preds[s].correct[:, i].mean() for s in sets.shifts])) for i in (0, 1)]
    delta, lo, hi = bootstrap_ci(samples, statistic, n_boot, seed)
    extra = {}
    if finding.metric == "shift_gain_minus_id_gain":  # the gains themselves, and the shift gain per pp of id gain
        id_gain = 100 * float(preds[sets.id].correct[:, 0].mean() - preds[sets.id].correct[:, 1].mean())
        shift_gain = values[0] - values[1]
        extra = {
            "id_gain_pp": round(id_gain, 3),
            "shift_gain_pp": round(shift_gain, 3),
            "ratio": round(shift_gain / id_gain, 3) if id_gain else None,
        }
    return {"name": finding.name, "metric": finding.metric, **comparison(finding.a, finding.b, values, delta, lo, hi, finding.claim)} | {
        "paper": finding.paper,
        **extra,
    }


def comparison(a: str, b: str, values: Sequence[float], delta: float, lo: float, hi: float, claim: str) -> dict:
    """Rows a and b, their values, a − b and its 95% interval (pp), and whether the interval supports `claim`."""
    rounded = {
        "a_value": round(values[0], 3),
        "b_value": round(values[1], 3),
        "delta_pp": round(delta, 3),
        "ci95": [round(lo, 3), round(hi, 3)],
    }
    return {"a": a, "b": b, **rounded, "claim": claim, "holds": holds(claim, lo, hi)}


def predictions(files: Mapping[tuple[str, str], Path], model_ids: list[str], set_name: str) -> Predictions:
    """Correctness and confidence of `model_ids` on one set, from their saved logits (labels must agree)."""
    correct, confidence, labels = [], [], None
    for model_id in model_ids:
        logits, y = load_logits(files[(model_id, set_name)])
        if labels is not None and not np.array_equal(labels, y.numpy()):
            raise ValueError(f"logits of {model_ids} on {set_name} are not over the same examples in the same order")
        labels = y.numpy()
        x = logits.numpy()
        correct.append(x.argmax(axis=1) == labels)
        confidence.append(softmax_confidence(x))
    return Predictions(np.stack(correct, axis=1).astype(np.float64), np.stack(confidence, axis=1))


def compute_findings(
    files: Mapping[tuple[str, str], Path],
    picked: Mapping[str, str],
    sets: SetNames,
    n_boot: int = N_BOOT,
    seed: int = 0,
    about: Mapping[str, Mapping[str, object]] | None = None,
) -> tuple[list[dict], list[str]]:
    """Every finding whose two models have logits on the sets it needs; and why the others were skipped.
    Each names the model of each row (`a_model`, `b_model`) and what `about[row]` says of it (WiSE-FT: its
    endpoints, `wise_ft_from` and `wise_ft_to`)."""
    results, skipped = [], []
    for finding in FINDINGS:
        needed = [sets.id] if finding.metric in ("top1_id", "ece_id") else [sets.id, *sets.shifts]
        rows = [finding.a, finding.b]
        missing = [r for r in rows if r not in picked]
        ids = [picked[r] for r in rows if r in picked]
        missing += [f"{m}/{s}" for m in ids for s in needed if (m, s) not in files]
        if missing:
            skipped.append(f"{finding.name}: no per-example logits for {', '.join(missing)} (eval.save_logits=true)")
            continue
        preds = {s: predictions(files, ids, s) for s in needed}
        named = {"a_model": picked[finding.a], "b_model": picked[finding.b]}
        for row in rows:
            named.update({k: v for k, v in (about or {}).get(row, {}).items() if v is not None and v == v})  # not NaN
        results.append({**measure(finding, preds, sets, n_boot, seed), **named})
    return results, skipped


def reliability_figure(files: Mapping[tuple[str, str], Path], picked: Mapping[str, str], sets: SetNames) -> Figure | None:
    """Accuracy against confidence in equal-mass bins on the id set, for the best individual, greedy soup and ensemble."""
    rows = [r for r in CALIBRATED if r in picked and (picked[r], sets.id) in files]
    if not rows:
        return None
    fig, (ax,) = new_figure(width=6.5, height=6.0)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="Perfect calibration")
    for row in rows:
        p = predictions(files, [picked[row]], sets.id)
        conf, acc, _ = reliability_bins(p.confidence[:, 0], p.correct[:, 0], N_BINS)
        ece = 100 * expected_calibration_error(p.confidence[:, 0], p.correct[:, 0], N_BINS)
        look = style(row)
        ax.plot(conf, acc, marker=look.marker, color=look.color, label=f"{look.label} (ECE {ece:.2f} pp)")
    ax.set_xlabel(f"Confidence (max softmax), {N_BINS} equal-mass bins")
    ax.set_ylabel(f"Accuracy on {sets.id}")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    return fig


def to_markdown(findings: list[dict]) -> str:
    """findings.json as a table: the README's "which findings reproduce" quotes it."""
    lines = ["| finding | a − b | a | b | Δ (pp) | 95% CI (pp) | paper | holds |", "|---|---|---:|---:|---:|---|---|---|"]
    for f in findings:
        lo, hi = f["ci95"]
        ends = f" [{f['a_model']}: {f['wise_ft_from']} → {f['wise_ft_to']}]" if "wise_ft_to" in f else ""
        lines.append(
            f"| {f['name']} | {f['a']}{ends} − {f['b']} ({f['metric']}) | {f['a_value']:.2f} | {f['b_value']:.2f} | {f['delta_pp']:+.2f} "
            f"| [{lo:+.2f}, {hi:+.2f}] | {f['paper']} | {'yes' if f['holds'] else 'no'} ({f['claim']}) |"
        )
    return "\n".join(lines) + "\n"
