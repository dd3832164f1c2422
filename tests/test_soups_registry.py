"""A soup method is declared once (soups/registry.py): the stage, the table rows, labels and styles, and the
docs' method table read that declaration."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from conftest import REPO

from models.results import make_record
from plots.methods import model_id_rows, style, table_rows
from plots.report import write_table
from soups.methods import METHODS, all_methods, get_method
from soups.registry import Row, register


@pytest.fixture
def toy_method():
    """A method a user adds: one decorated function, nothing else (the registry is restored afterwards)."""
    saved = dict(METHODS)

    @register("toy", "a test's own method", (Row("toy_soup", "Toy soup", "C7", "o"),))
    def toy(ctx):  # never run: the table only reads the records it would write
        raise AssertionError

    yield "toy"
    METHODS.clear()
    METHODS.update(saved)


def records(rows: dict[str, tuple[str, float]]) -> pd.DataFrame:
    """Records of model_id -> (kind, held-out = id = shift accuracy), 100 images each."""
    out = []
    for model_id, (kind, top1) in rows.items():
        for dataset, role in (("heldout", "heldout"), ("photo", "id"), ("sketch", "shift")):
            out.append(make_record(model_id=model_id, kind=kind, dataset=dataset, role=role, correct=round(top1 * 100), n=100))
    return pd.DataFrame(out)


def test_a_toy_method_reaches_the_main_table_through_the_registry_alone(toy_method, tmp_path):
    assert get_method("toy").rows[0].name == "toy_soup" and table_rows()[-1] == "toy_soup" and "toy_soup" in model_id_rows()
    table_records = records({"model_0": ("individual", 0.60), "uniform_soup": ("uniform_soup", 0.70), "toy_soup": ("toy_soup", 0.80)})
    write_table(table_records, tmp_path, None)
    csv = pd.read_csv(tmp_path / "main_table.csv").set_index("method")
    assert list(csv.index) == ["best_individual", "oracle", "uniform_soup", "toy_soup"]  # the registry's order, toy last
    assert csv.loc["toy_soup", "id"] == 80.0
    assert "| Toy soup | 80.00 |" in (tmp_path / "main_table.md").read_text()
    assert (style("toy_soup").color, style("toy_soup").marker) == ("C7", "o")


def test_the_table_rows_are_the_papers_order_then_later_methods():
    assert table_rows() == (
        "zeroshot",
        "lp_init",
        "best_individual",
        "second_best_individual",
        "oracle",
        "uniform_soup",
        "greedy_soup",
        "greedy_soup_random_order",
        "learned_soup",
        "learned_soup_by_layer",
        "ensemble",
        "greedy_ensemble",
        "wise_ft",
        "model_stock",
        "task_arithmetic",
    )
    spaces = {name: method.space for name, method in all_methods().items()}
    assert {name for name, space in spaces.items() if space == "output"} == {"ensemble", "greedy_ensemble"}


def test_a_method_declares_a_space_and_a_row():
    with pytest.raises(ValueError, match="space must be"):
        register("bad", "nowhere", (Row("bad", "Bad", "C0", "o"),), space="input")(lambda ctx: None)
    with pytest.raises(ValueError, match="registered twice"):
        register("uniform", "again", (Row("uniform_soup", "Uniform", "C0", "o"),))(lambda ctx: None)
    assert "bad" not in all_methods()


def test_the_docs_method_table_lists_every_soup_option_and_its_rows():
    readme = (REPO / "soups/README.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \| .* \| `(\w+)`", readme, flags=re.MULTILINE)  # soup= option, its records' kind
    options = sorted(p.stem for p in (REPO / "conf/soup").glob("*.yaml"))
    assert sorted(option for option, _ in documented) == options
    rows = {row.name for method in all_methods().values() for row in method.rows}
    assert {kind for _, kind in documented} == rows
