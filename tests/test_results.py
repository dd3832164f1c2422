"""The results store and the official wide format."""

from __future__ import annotations

import json
import multiprocessing

import pandas as pd
import pytest
from conftest import mark_done

from models.errors import UserError
from models.results import (
    append_records,
    avg_shift_accuracy,
    load_results,
    make_record,
    read_official_results,
    read_records,
    wide_table,
    write_official_results,
)


def _writer(args):
    run_dir, worker, count = args
    for i in range(count):
        append_records(run_dir, [make_record(model_id=f"w{worker}_{i}", kind="individual", dataset="photo", role="id", correct=i, n=count)])


@pytest.mark.parametrize("same_folder", [False, True])
def test_two_processes_writing_at_once_lose_nothing(tmp_path, same_folder):
    count = 200
    dirs = [tmp_path / "run", tmp_path / "run"] if same_folder else [tmp_path / "a", tmp_path / "b"]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_writer, [(dirs[0], 0, count), (dirs[1], 1, count)])
    mark_done(*dirs)
    table = load_results(tmp_path)
    assert len(table) == 2 * count
    assert set(table["model_id"]) == {f"w{w}_{i}" for w in (0, 1) for i in range(count)}


def test_record_fields_and_top1():
    record = make_record(
        model_id="m",
        kind="soup",
        dataset="ImageNetR",
        role="shift",
        correct=3,
        n=4,
        checkpoint={"path": "p", "sha256": "ab"},
        config=["x=1"],
    )
    assert record["top1"] == 0.75
    for field in ("model_id", "kind", "dataset", "role", "top1", "n", "checkpoint", "git", "config", "time"):
        assert field in record
    with pytest.raises(ValueError):
        make_record(model_id="m", kind="soup", dataset="d", role="test", correct=1, n=1)


def test_torn_last_line_is_skipped_but_corruption_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps(make_record(model_id="m", kind="individual", dataset="photo", role="id", correct=1, n=2))
    path.write_text(good + "\n" + '{"model_id": "half')
    assert len(read_records(path)) == 1
    path.write_text('{"broken\n' + good + "\n")
    with pytest.raises(UserError, match="results.jsonl:1"):
        read_records(path)


def test_wide_table_and_avg_shifts_by_hand():
    records = [
        make_record(model_id="a", kind="individual", dataset=d, role=r, correct=c, n=10)
        for d, r, c in [("held", "heldout", 9), ("photo", "id", 8), ("s1", "shift", 4), ("s2", "shift", 6)]
    ]
    table = load_results_from(records)
    wide = wide_table(table)
    assert wide.loc["a", "photo"] == pytest.approx(0.8)
    assert avg_shift_accuracy(table)["a"] == pytest.approx((0.4 + 0.6) / 2)


def load_results_from(records):
    return pd.DataFrame.from_records(records)


def test_official_format_round_trips(tmp_path, reference_dir):
    source = reference_dir / "individual_model_results.jsonl"
    table = read_official_results(source)
    assert table["model_id"].nunique() == 72
    out = write_official_results(table, tmp_path / "individual_model_results.jsonl")
    original = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(written, key=lambda r: r["model_name"]) == sorted(original, key=lambda r: r["model_name"])
    # A hand-checked value from the file: model_0 (the LP init) has 75.574% ImageNet accuracy.
    model_0 = table[(table.model_id == "model_0") & (table.dataset == "ImageNet")]
    assert model_0["top1"].item() == pytest.approx(0.75574)


def test_official_format_round_trips_without_reference(tmp_path):
    line = {
        "model_name": "m",
        "ImageNet2p": 0.5,
        "ImageNet": 0.25,
        "ImageNetV2": 0.1,
        "ImageNetSketch": 0.2,
        "ImageNetR": 0.3,
        "ObjectNet": 0.4,
        "ImageNetA": 0.05,
    }
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    table = read_official_results(tmp_path / "in.jsonl")
    assert avg_shift_accuracy(table)["m"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.05) / 5)
    write_official_results(table, tmp_path / "out.jsonl")
    assert json.loads((tmp_path / "out.jsonl").read_text()) == line


def test_records_of_unfinished_runs_are_never_read(tmp_path):
    for name in ("finished", "killed"):
        append_records(tmp_path / name, [make_record(model_id=name, kind="individual", dataset="photo", role="id", correct=1, n=2)])
    mark_done(tmp_path / "finished")
    assert load_results(tmp_path)["model_id"].tolist() == ["finished"]
    with pytest.raises(UserError, match="no results.jsonl records of finished runs"):
        load_results(tmp_path / "killed")
