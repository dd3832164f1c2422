"""The soup methods, each declared once: name, paper reference, parameters, space, and the table rows it makes.

`python -m soups soup=<option>` picks a method by `soup.name`; the stage reads its parameters as the
method's dataclass (models/schemas.py, the Hydra structured config its YAML file starts from). A method
is added with the `register` decorator on its `(SoupContext) -> SoupOutcome` function (soups/methods.py),
as mergekit's merge methods declare themselves. Everything else reads the declaration: the stage
(`soups.methods.get_method`), the plots' table rows, labels and styles (plots/methods.py), and the
tests of the YAML files and of the docs' method table. soups/README.md, "Adding a method", is the recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from models.schemas import SoupParams

Space = Literal["weight", "output"]  # one set of weights (a checkpoint), or a combination of outputs (an ensemble)


@dataclasses.dataclass(frozen=True)
class Row:
    """A row of the main table that a method's records make (their `kind`), and how every figure draws it."""

    name: str  # the records' kind, e.g. greedy_soup
    label: str  # in tables and legends
    color: str  # matplotlib colour
    marker: str  # matplotlib marker
    size: float = 170.0  # scatter marker area (pt^2)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str  # soup.name
    reference: str  # where the paper (or the method's own paper) defines it
    params: type[SoupParams]  # its conf/soup/*.yaml starts from the same class (tests/test_typed_configs.py)
    run: Callable[[Any], Any]  # (SoupContext) -> SoupOutcome, soups/methods.py
    space: Space
    rows: tuple[Row, ...]  # in the table's order; the run picks one per outcome (greedy: by soup.order)
    across_tasks: bool = False  # averages image towers of ingredients fine-tuned on different tasks (soup.across_tasks)


METHODS: dict[str, Method] = {}  # in registration order, which is the table's; read it through soups.methods.all_methods()


def register(
    name: str,
    reference: str,
    rows: tuple[Row, ...],
    params: type[SoupParams] = SoupParams,
    space: Space = "weight",
    across_tasks: bool = False,
) -> Callable[[Callable], Callable]:
    def add(run: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"soup method {name!r} is registered twice")
        if space not in ("weight", "output") or not rows:
            raise ValueError(f"soup method {name!r}: space must be 'weight' or 'output', and it makes at least one row")
        METHODS[name] = Method(name, reference, params, run, space, tuple(rows), across_tasks)
        return run

    return add
