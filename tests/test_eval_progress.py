"""Eval says how far it is: a bar per set on stderr (images, rate, time left), and a slow-workers note once."""

from __future__ import annotations

import logging

import pytest

import models.evaluate as evaluate
from datasets import EvalSet
from models.evaluate import score_models, show_progress
from tests.test_eval_engine import MODEL_A, CountingSet, linear


def test_a_bar_counts_every_image_of_every_set(capsys):
    for name in ("heldout", "shift"):
        score_models([linear(*MODEL_A)], EvalSet(name, "id", CountingSet(), ["a", "b", "c"]), batch_size=4, amp=False, progress=True)
    err = capsys.readouterr().err
    # 11 images in batches of 4: the bar ends at 11/11, once per set, on stderr only
    for name in ("heldout", "shift"):
        assert f"{name} (1 model): 100%" in err and "11/11 [" in err
    score_models([linear(*MODEL_A)], EvalSet("quiet", "id", CountingSet(), ["a", "b", "c"]), batch_size=4, amp=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # progress=False (the default): no bar


@pytest.mark.parametrize("setting,tty,shown", [("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False)])
def test_auto_shows_the_bar_only_on_a_terminal(setting, tty, shown, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    assert show_progress(setting) is shown


def test_too_many_workers_is_said_once_for_all_sets(caplog, monkeypatch):
    monkeypatch.setattr(evaluate, "_said", set())
    monkeypatch.setattr(evaluate, "available_cores", lambda: 1)
    caplog.set_level(logging.WARNING, logger="models.evaluate")
    sets = [EvalSet(name, "id", CountingSet(), ["a", "b", "c"]) for name in ("one", "two", "three")]
    for eval_set in sets:
        (result,) = score_models([linear(*MODEL_A)], eval_set, batch_size=4, workers=2, amp=False)
        assert result.n == 11
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["2 DataLoader workers on 1 cores may run slowly; lower data.workers (said once)"]
