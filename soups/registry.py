"""The soup methods, each declared once: name, paper reference, parameters (a models/schemas.py dataclass).

`python -m soups soup=<option>` picks a method by `soup.name`; the stage reads its parameters as the
method's dataclass (models/schemas.py, the Hydra structured config its YAML file starts from). A method
is added with the `register` decorator on its `(SoupContext) -> SoupOutcome` function
(soups/methods.py), as mergekit's merge methods declare themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from models.errors import UserError
from models.schemas import SoupParams


@dataclasses.dataclass(frozen=True)
class Method:
    name: str  # soup.name
    reference: str  # where the paper (or the method's own paper) defines it
    params: type[SoupParams]  # its conf/soup/*.yaml starts from the same class (tests/test_typed_configs.py)
    run: Callable[[Any], Any]  # (SoupContext) -> SoupOutcome, soups/methods.py


METHODS: dict[str, Method] = {}  # filled by soups/methods.py; read it through all_methods()


def register(name: str, reference: str, params: type[SoupParams] = SoupParams) -> Callable[[Callable], Callable]:
    def add(run: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"soup method {name!r} is registered twice")
        METHODS[name] = Method(name, reference, params, run)
        return run

    return add


def all_methods() -> dict[str, Method]:
    import soups.methods  # noqa: F401  (registers the methods)

    return METHODS


def get_method(name: str) -> Method:
    if name not in all_methods():
        raise UserError(f"soup.name: unknown soup method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
