"""Findings with 95% intervals: the paired bootstrap and ECE against hand computations, findings.json end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_in_process, run_module

from models.logits import save_logits
from models.results import append_records, make_record
from plots.findings import FINDINGS, Predictions, holds, measure
from plots.stats import accuracy_half_width, bootstrap_ci, expected_calibration_error, reliability_bins
from plots.table import SetNames, ci_half_widths


def paired(n: int, both: int, only_a: int, only_b: int) -> np.ndarray:
    """[n, 2] correctness of models a and b: `both` right together, `only_a`, `only_b`, the rest wrong for both."""
    x = np.zeros((n, 2))
    x[:both] = 1
    x[both : both + only_a, 0] = 1
    x[both + only_a : both + only_a + only_b, 1] = 1
    return x


def gap_pp(s):
    return 100 * float(s["id"][:, 0].mean() - s["id"][:, 1].mean())


def test_bootstrap_interval_matches_the_paired_normal_interval():
    # a right and b wrong on 5% of 10,000 images, the reverse on 3%: delta 2 pp, and the paired standard
    # error sqrt((p10 + p01 - (p10 - p01)^2) / n) = 0.2821 pp gives the interval 2 +- 0.553 pp.
    x = paired(10_000, 8000, 500, 300)
    observed, lo, hi = bootstrap_ci({"id": x}, gap_pp, n_boot=2000, seed=1)
    se = 100 * math.sqrt((0.08 - 0.02**2) / 10_000)
    assert observed == pytest.approx(2.0)
    assert lo == pytest.approx(2.0 - 1.96 * se, abs=0.06) and hi == pytest.approx(2.0 + 1.96 * se, abs=0.06)
    assert lo > 0  # excludes 0


def test_bootstrap_interval_includes_zero_when_the_models_disagree_evenly():
    x = paired(2000, 1500, 40, 40)  # same accuracy, 80 discordant images
    observed, lo, hi = bootstrap_ci({"id": x}, gap_pp, n_boot=1000)
    assert observed == 0 and lo < 0 < hi


def test_bootstrap_is_paired_identical_models_have_a_zero_width_interval():
    rng = np.random.default_rng(0)
    right = (rng.random(500) < 0.6).astype(float)
    assert bootstrap_ci({"id": np.stack([right, right], axis=1)}, gap_pp, n_boot=200) == (0.0, 0.0, 0.0)


def test_ece_is_zero_for_a_calibrated_set_and_the_hand_value_otherwise():
    # ten groups of 100 images at confidence 0.05, 0.15, ..., 0.95, each with exactly that share right
    confidence = np.repeat(np.arange(10) / 10 + 0.05, 100)
    correct = np.concatenate([np.arange(100) < round(100 * c) for c in np.arange(10) / 10 + 0.05]).astype(float)
    assert expected_calibration_error(confidence, correct, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    # over-confident: 0.9 confidence, 60% right in every bin -> 0.3
    assert expected_calibration_error(np.full(1500, 0.9), (np.arange(1500) % 5 < 3).astype(float), 15) == pytest.approx(0.3)
    # two equal-mass bins by hand: (0.2, 0.2 | 0.8, 0.8) with (0, 1 | 1, 1) right: 0.5 * 0.3 + 0.5 * 0.2
    conf, acc, counts = reliability_bins(np.array([0.8, 0.2, 0.8, 0.2]), np.array([1.0, 0.0, 1.0, 1.0]), 2)
    assert conf.tolist() == [0.2, 0.8] and acc.tolist() == [0.5, 1.0] and counts.tolist() == [2, 2]
    assert expected_calibration_error(np.array([0.8, 0.2, 0.8, 0.2]), np.array([1.0, 0.0, 1.0, 1.0]), 2) == pytest.approx(0.25)


def test_claims():
    assert holds("greater", 0.1, 2) and not holds("greater", -0.1, 2)
    assert holds("less", -2, -0.1) and not holds("less", -2, 0.1)
    assert holds("close", -0.4, 0.5) and not holds("close", -0.6, 0.1)
    assert holds("not_less", -1, 0.0) and not holds("not_less", -1, -0.01)


def test_ece_finding_is_the_difference_of_the_two_models_ece():
    # a: confidence 0.9, 60% right (ECE 30 pp); b: confidence 0.7, 70% right (ECE 0); 15 bins of 100 images
    n = 1500
    correct = np.stack([np.arange(n) % 5 < 3, np.arange(n) % 10 < 7], axis=1).astype(float)
    confidence = np.stack([np.full(n, 0.9), np.full(n, 0.7)], axis=1)
    finding = next(f for f in FINDINGS if f.name == "ece_soup_vs_ensemble")
    result = measure(finding, {"I": Predictions(correct, confidence)}, SetNames("H", "I", ()), n_boot=200)
    assert (
        result["delta_pp"] == pytest.approx(30.0) and result["a_value"] == pytest.approx(30.0) and result["b_value"] == pytest.approx(0.0)
    )
    assert result["holds"] and result["ci95"][0] > 20


def test_table_half_widths_by_hand():
    assert 100 * accuracy_half_width([0.9], [10_000]) == pytest.approx(100 * 1.96 * 0.003)
    # two shifts at 50% on 100 images each: 1.96 * sqrt(0.0025 + 0.0025) / 2
    assert accuracy_half_width([0.5, 0.5], [100, 100]) == pytest.approx(1.96 * math.sqrt(0.005) / 2)
    records = pd.DataFrame(
        [make_record(model_id="m", kind="individual", dataset=d, role=r, correct=c, n=n) for d, r, c, n in
         [("I", "id", 9000, 10_000), ("S1", "shift", 50, 100), ("S2", "shift", 50, 100)]]
    )  # fmt: skip
    widths = ci_half_widths(records, {"best_individual": "m"}, SetNames(None, "I", ("S1", "S2")))
    assert widths.loc["best_individual"].tolist() == [0.59, round(100 * 1.96 * math.sqrt(0.005) / 2, 2)]


# --- end to end: records and saved logits -> findings.json ------------------------------------------------

N = 400
SETS = {"H": "heldout", "I": "id", "S1": "shift", "S2": "shift"}
# model_id, kind, images right (the first k of each set, so models are nested and paired), extra fields
MODELS = [
    ("zeroshot", "zeroshot", (200, 200, 200, 200), {}),
    ("m1", "individual", (300, 320, 240, 220), {}),
    ("m2", "individual", (360, 340, 200, 180), {}),  # best held-out
    ("greedy_soup", "greedy_soup", (370, 352, 230, 190), {}),
    ("uniform_soup", "uniform_soup", (350, 336, 250, 230), {}),
    ("ensemble", "ensemble", (370, 350, 228, 200), {}),
    ("wise_ft_alpha0.50", "wise_ft", (330, 300, 260, 250), {"alpha": 0.5, "wise_ft_from": "zs.safetensors", "wise_ft_to": "m2"}),
    # a second WiSE-FT curve, worse on held-out: the table's row (and the finding) is the first curve's α = 0.5
    ("wise_ft_greedy_alpha0.50", "wise_ft", (300, 310, 270, 260), {"alpha": 0.5, "wise_ft_from": "zs.safetensors", "wise_ft_to": "greedy"}),
]


def two_class_logits(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(N) % 2
    right = torch.arange(N) < k
    predicted = torch.where(right, labels, 1 - labels)
    return torch.nn.functional.one_hot(predicted, 2).float() * 2.0, labels


def test_plots_writes_findings_from_saved_logits(tmp_path):
    run = tmp_path / "runs" / "r"
    records = []
    for model_id, kind, rights, extra in MODELS:
        for (dataset, role), k in zip(SETS.items(), rights):
            records.append(make_record(model_id=model_id, kind=kind, dataset=dataset, role=role, correct=k, n=N, **extra))
            save_logits(run, model_id, dataset, *two_class_logits(k))
    append_records(run, records)
    (run / "DONE").write_text("")
    out = tmp_path / "out"
    result = run_in_process("plots", f"results={tmp_path / 'runs'}", f"out={out}", "figure=findings", "hydra.output_subdir=null")
    assert result.returncode == 0, result.stderr
    findings = {f["name"]: f for f in json.loads((out / "findings.json").read_text())}
    assert set(findings) == {f.name for f in FINDINGS}
    # nested correctness: greedy (352) vs best individual m2 (340) on I: +3 pp, never below 0 in any resample
    assert findings["greedy_vs_best_id"]["delta_pp"] == pytest.approx(3.0) and findings["greedy_vs_best_id"]["ci95"][0] >= 0
    assert findings["greedy_vs_best_shifts"]["delta_pp"] == pytest.approx(100 * (30 / N + 10 / N) / 2)
    assert findings["uniform_vs_best_id"]["delta_pp"] == pytest.approx(-1.0)
    assert findings["wise_ft_vs_best_shifts"]["delta_pp"] == pytest.approx(100 * (60 / N + 70 / N) / 2)
    wise = findings["wise_ft_vs_best_shifts"]
    assert (wise["a_model"], wise["b_model"], wise["wise_ft_from"], wise["wise_ft_to"]) == (
        "wise_ft_alpha0.50",
        "m2",
        "zs.safetensors",
        "m2",
    )
    # trade-off from zero-shot to m2: shifts gain (0 - 20) / 2 images, id gain 140 images, on 400 each
    assert findings["finetune_tradeoff"]["delta_pp"] == pytest.approx(100 * (-10 / N - 140 / N)) and findings["finetune_tradeoff"]["holds"]
    assert findings["finetune_tradeoff"]["ratio"] == pytest.approx(round((-10 / N) / (140 / N), 3))
    assert findings["greedy_soup_vs_ensemble_id"]["delta_pp"] == pytest.approx(0.5)
    assert (out / "fig_reliability.png").stat().st_size > 1000
    assert "wise_ft [wise_ft_alpha0.50: zs.safetensors → m2] − best_individual" in (out / "findings.md").read_text()
    assert "| greedy_vs_best_id | greedy_soup − best_individual (top1_id) | 88.00 | 85.00 | +3.00 |" in (out / "findings.md").read_text()
    table = pd.read_csv(out / "main_table.csv", index_col="method")
    assert table.loc["greedy_soup", "id_ci95"] == pytest.approx(round(100 * accuracy_half_width([352 / N], [N]), 2))


# --- three sweep seeds ----------------------------------------------------------------------------------


def test_seeds_summary_by_hand(tmp_path, capsys):
    seeds = [
        [{"name": "g", "metric": "top1_id", "claim": "greater", "delta_pp": d, "holds": d > 0.5}, {"name": "e", "metric": "ece_id", "delta_pp": 1.0, "holds": True}]
        for d in (0.2, 0.8, 1.1)
    ]  # fmt: skip
    paths = []
    for i, findings in enumerate(seeds):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(findings))
    result = run_module("plots.seeds", *map(str, paths), f"--out={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    summary = {s["name"]: s for s in json.loads((tmp_path / "out" / "findings_seeds.json").read_text())["findings"]}
    assert summary["g"]["mean_pp"] == pytest.approx(0.7) and summary["g"]["sd_pp"] == pytest.approx(
        math.sqrt((0.25 + 0.01 + 0.16) / 2), abs=1e-3
    )
    assert summary["g"]["held"] == 2 and summary["e"]["sd_pp"] == 0.0
    assert "| g | top1_id | +0.70 | 0.46 | 2/3 | +0.20, +0.80, +1.10 |" in (tmp_path / "out" / "findings_seeds.md").read_text()
    from plots.seeds import main  # a missing file: the command's own code path, in this process

    capsys.readouterr()
    assert main([str(tmp_path / "nope.json"), f"--out={tmp_path / 'out2'}"]) == 2
    stderr = capsys.readouterr().err
    assert "nope.json" in stderr and stderr.count("\n") == 1


def test_seed_runs_draw_their_own_sweep_into_their_own_folders():
    from pipeline.steps import experiment_steps, seeds_steps

    plain = experiment_steps("demo")
    seeded = experiment_steps("demo", sweep_seed=1)
    sweep = next(s for s in seeded if s.name == "fine-tuning sweep")
    assert "sweep.seed=1" in sweep.argv and "paths.runs=runs/demo_seeds/seed1" in sweep.argv
    assert not any(a.startswith("sweep.seed") for s in plain for a in s.argv)
    for step in seeded[1:]:  # every stage after the world's writes under the seed's own runs folder, results included
        assert "paths.runs=runs/demo_seeds/seed1" in step.argv and not any(a == "out=results/demo" for a in step.argv), step.argv
    assert any(a == "out=runs/demo_seeds/seed1/results" for a in seeded[-1].argv)
    steps = seeds_steps("demo", [0, 1, 2])
    assert [s.argv for s in steps[: len(plain)]] == [s.argv for s in plain]  # seed 0 is `make demo` itself
    assert steps[-1].argv == (
        "python", "-m", "plots.seeds", "results/demo/findings.json", "runs/demo_seeds/seed1/results/findings.json",
        "runs/demo_seeds/seed2/results/findings.json", "--out=results/demo_seeds",
    )  # fmt: skip


def test_readme_quotes_the_committed_findings():
    # The README's "Which findings reproduce" table is findings.json of results/demo, row by row.
    from models.cli import PROJECT_ROOT

    findings = json.loads((PROJECT_ROOT / "results" / "demo" / "findings.json").read_text())
    readme = (PROJECT_ROOT / "README.md").read_text()
    start = readme.index("### Which findings reproduce")
    section = readme[start : readme.index("\n## ", start)]  # up to the next section (the transfer findings follow)
    rows = [line for line in section.splitlines() if line.startswith("| ") and "[" in line]
    assert len(rows) == len(findings)

    def pp(x: float) -> str:
        return f"{x:+.2f}".replace("-", "−")

    for row, finding in zip(rows, findings):
        cells = [c.strip() for c in row.strip("|").split("|")]
        lo, hi = finding["ci95"]
        assert cells[1] == pp(finding["delta_pp"]) and cells[2] == f"[{pp(lo)}, {pp(hi)}]", (finding["name"], row)
        assert cells[4].startswith("yes") == finding["holds"], (finding["name"], row)
