"""`python -m plots`: the main table from records (hand-computed), the official results, the record-driven figures."""

import json
import math

import pandas as pd
import pytest
from conftest import mark_done, run_in_process

from models.results import append_records, make_record
from plots.inputs import load_official
from plots.report import read_trajectory
from plots.table import main_table, model_accuracies, set_names, to_csv, to_percent

SETS = {"H": "heldout", "I": "id", "S1": "shift", "S2": "shift"}

# model_id, kind, accuracy on H, I, S1, S2 (fractions), extra fields
MODELS = [
    ("zs", "zeroshot", (0.50, 0.50, 0.50, 0.50), {}),
    ("m1", "individual", (0.80, 0.70, 0.50, 0.40), {}),
    ("m2", "individual", (0.90, 0.60, 0.30, 0.60), {}),
    ("m3", "individual", (0.85, 0.75, 0.55, 0.20), {}),
    ("uniform_soup", "uniform_soup", (0.91, 0.76, 0.52, 0.58), {}),
    ("my_greedy_run", "greedy_soup", (0.95, 0.78, 2 / 3, 0.50), {}),
    ("wise_ft_alpha0.50", "wise_ft", (0.70, 0.65, 0.60, 0.60), {"alpha": 0.5}),
    ("wise_ft_alpha1.00", "wise_ft", (0.90, 0.60, 0.30, 0.60), {"alpha": 1.0}),
]


def make_records(n: int = 3000) -> list[dict]:
    records = []
    for model_id, kind, accuracies, extra in MODELS:
        for (dataset, role), top1 in zip(SETS.items(), accuracies):
            records.append(make_record(model_id=model_id, kind=kind, dataset=dataset, role=role, correct=round(top1 * n), n=n, **extra))
    return records


def test_main_table_matches_hand_computed_rows():
    records = pd.DataFrame(make_records())
    sets = set_names(records, preferred_order=["S2", "S1"])
    assert sets.heldout == "H" and sets.id == "I" and sets.shifts == ("S2", "S1")
    table, picked = main_table(model_accuracies(records, sets), sets)
    table = to_percent(table)
    assert list(table.columns) == ["heldout", "id", "S2", "S1", "avg_shifts"]
    assert list(table.index) == [
        "zeroshot",
        "best_individual",
        "second_best_individual",
        "oracle",
        "uniform_soup",
        "greedy_soup",
        "wise_ft",
    ]
    assert picked["best_individual"] == "m2" and picked["second_best_individual"] == "m3" and picked["greedy_soup"] == "my_greedy_run"
    assert picked["wise_ft"] == "wise_ft_alpha0.50"  # the default α = 0.5 even though α = 1 has the better held-out
    expected = {
        "best_individual": [90.0, 60.0, 60.0, 30.0, 45.0],  # m2: avg (60 + 30) / 2
        "second_best_individual": [85.0, 75.0, 20.0, 55.0, 37.5],  # m3
        "oracle": [90.0, 75.0, 60.0, 55.0, 57.5],  # per-set maxima over m1..m3; avg of the shift maxima
        "uniform_soup": [91.0, 76.0, 58.0, 52.0, 55.0],
        "greedy_soup": [95.0, 78.0, 50.0, 66.67, 58.33],  # 2/3 -> 66.67; (50 + 66.667) / 2 = 58.33
    }
    for row, values in expected.items():
        assert table.loc[row].tolist() == pytest.approx(values, abs=1e-9), row
    assert to_csv(table).splitlines()[0] == "method,heldout,id,S2,S1,avg_shifts"


def test_latest_record_wins_and_missing_shift_leaves_average_empty():
    records = make_records()
    records.append(dict(make_record(model_id="m1", kind="individual", dataset="H", role="heldout", correct=99, n=100), time="9999"))
    records = [r for r in records if not (r["model_id"] == "m3" and r["dataset"] == "S1")]
    frame = pd.DataFrame(records)
    sets = set_names(frame)
    models = model_accuracies(frame, sets)
    assert models.loc["m1", "heldout"] == pytest.approx(0.99)
    assert math.isnan(models.loc["m3", "avg_shifts"])
    table, picked = main_table(models, sets)
    assert picked["best_individual"] == "m1"


def test_cli_writes_tables_and_figures(tmp_path):
    runs = tmp_path / "runs"
    append_records(runs / "a", make_records()[:16])
    append_records(runs / "b", make_records()[16:])
    mark_done(runs / "a", runs / "b")
    trajectory = [
        {"step": 0, "ingredient": "m2", "ingredient_heldout_top1": 0.9, "accepted": True, "heldout_top1": 0.9, "soup_heldout_top1": 0.9},
        {"step": 1, "ingredient": "m3", "ingredient_heldout_top1": 0.85, "accepted": True, "heldout_top1": 0.95, "soup_heldout_top1": 0.95},
        {"step": 2, "ingredient": "m1", "ingredient_heldout_top1": 0.8, "accepted": False, "heldout_top1": None, "soup_heldout_top1": 0.95},
    ]
    (runs / "b" / "greedy_trajectory.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trajectory))
    out = tmp_path / "out"
    result = run_in_process("plots", f"results={runs}", f"out={out}", "hydra.output_subdir=null")  # the real command: both pipelines
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "main_table.csv", index_col="method")
    assert table.loc["greedy_soup", "avg_shifts"] == pytest.approx(58.33)
    assert "| Greedy soup (my_greedy_run) | 95.00 | 78.00 |" in (out / "main_table.md").read_text()
    assert r"\begin{tabular}" in (out / "main_table.tex").read_text()
    for name in ("fig1_accuracy_vs_robustness", "fig2_greedy_trajectory", "fig6_wise_ft"):
        for fmt in ("png", "pdf"):
            assert (out / f"{name}.{fmt}").stat().st_size > 1000, name
    assert read_trajectory(runs / "b" / "greedy_trajectory.jsonl")["tried_heldout"].isna().tolist() == [False, False, True]


def test_cli_bad_input_is_one_line(tmp_path):
    result = run_in_process("plots", f"results={tmp_path / 'nowhere'}", f"out={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "out" / "main_table.csv").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_text('{"model_id": "x"}\n{"also": "bad"}\n')
    mark_done(bad)
    result = run_in_process("plots", f"results={bad}", f"out={tmp_path / 'out2'}")
    assert result.returncode == 2 and "results.jsonl:1" in result.stderr


def test_official_results_reproduce_the_published_derivations(reference_dir, tmp_path):
    records = load_official(reference_dir)
    assert set(records.loc[records["kind"] == "lp", "model_id"]) == {"model_0"}  # hparam_info.json's LP init
    out = tmp_path / "official"
    result = run_in_process("plots", f"results={reference_dir}", f"out={out}", "hydra.output_subdir=null")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "main_table.csv", index_col="method")
    # ../shared/reference/README.md: figures derived from these files
    assert table.loc["best_individual", ["heldout", "id", "avg_shifts"]].tolist() == [83.05, 80.39, 47.97]
    assert table.loc["second_best_individual", ["id", "avg_shifts"]].tolist() == [79.89, 43.99]
    assert table.loc["uniform_soup", ["heldout", "id", "avg_shifts"]].tolist() == [82.70, 79.97, 51.58]
    assert table.loc["greedy_soup", ["heldout", "id", "avg_shifts"]].tolist() == [83.98, 81.03, 50.86]
    assert table.loc["greedy_soup", ["paper_id", "paper_avg_shifts"]].tolist() == [81.03, 50.75]  # results/paper/
    assert list(table.columns[:8]) == ["heldout", "id", "ImageNetV2", "ImageNetR", "ImageNetSketch", "ObjectNet", "ImageNetA", "avg_shifts"]
    assert json.loads((out / "main_table_models.json").read_text())["best_individual"] == "model_43"
    assert (out / "fig1_accuracy_vs_robustness.png").stat().st_size > 10000


def test_the_table_says_what_it_holds_chance_partial_held_out_and_partial_shifts(tmp_path, capsys):
    """Six balanced classes (chance 1/6), models at chance; one individual without a held-out record; 3 of
    ImageNet's 5 shifts: the table has a chance row and says "at chance", names how the best individual was
    chosen, and calls its shift average what it is."""
    from plots.report import write_table

    sets = {"ImageNet2p": "heldout", "ImageNet": "id", "ImageNetV2": "shift", "ImageNetR": "shift", "ObjectNet": "shift"}
    rows = [("zs", "zeroshot", 0.17), ("m1", "individual", 0.18), ("m2", "individual", 0.16), ("m3", "individual", 0.19)]
    records = []
    for model_id, kind, top1 in rows:
        for dataset, role in sets.items():
            if model_id == "m3" and role == "heldout":
                continue
            n = 600
            records.append(
                make_record(model_id=model_id, kind=kind, dataset=dataset, role=role, correct=round(top1 * n), n=n, per_class_n=[100] * 6)
            )
    write_table(pd.DataFrame(records), tmp_path, None)
    table = pd.read_csv(tmp_path / "main_table.csv", index_col="method", keep_default_na=False)
    assert "avg_shifts" not in table.columns and "avg_3_of_5_shifts" in table.columns
    assert table.loc["chance", "id"] == pytest.approx(16.67) and table.loc["chance", "avg_3_of_5_shifts"] == pytest.approx(16.67)
    # 2 standard errors of 600 guesses at 1/6: 3.0 pp, so 19% is still chance
    assert all(table.loc[row, "note"].startswith("at chance") for row in ("zeroshot", "best_individual", "oracle"))
    assert float(table.loc["best_individual", "id_vs_zeroshot"]) == pytest.approx(1.0)  # m1: 18 - 17
    assert "chosen by held-out among the 2 of 3 individuals with a held-out record" in table.loc["best_individual", "note"]
    markdown = (tmp_path / "main_table.md").read_text()
    assert "| Best individual (held-out, best of the 2 of 3 with a held-out record) (m1) |" in markdown
    assert "| Best individual (held-out) " not in markdown
    assert "rows are at chance on ImageNet" in markdown and "cannot do this task" in capsys.readouterr().out
    assert (
        "mean over ImageNetV2, ImageNetR, ObjectNet only (no records for ImageNetSketch, ImageNetA)"
        in (tmp_path / "main_table.tex").read_text()
    )
