"""The soup methods' parameters as Hydra structured configs, and `cfg.soup` as typed parameters.

`register_configs()` stores each method's dataclass (soups.registry) in Hydra's ConfigStore as
`schema/soup/<method>`; every `conf/soup/<option>.yaml` starts from it (`defaults:`), so the dataclass
is the one place the defaults live and Hydra refuses a typo or a wrong type while composing, before
any work. `soup_params(cfg.soup)` gives the stage the typed, checked parameters, composed with the
schema or not (a config built by hand, a test).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.errors import UserError
from soups.params import SoupParams
from soups.registry import METHODS, get_method

SCHEMA_GROUP = "schema/soup"


def register_configs() -> None:
    """Store every method's parameters in Hydra's ConfigStore (call before Hydra composes)."""
    from hydra.core.config_store import ConfigStore

    get_method("uniform")  # imports soups.methods, which registers every method
    store = ConfigStore.instance()
    for method in METHODS.values():
        store.store(group=SCHEMA_GROUP, name=method.name, node=method.params)


def soup_params(options: DictConfig | dict[str, Any]) -> SoupParams:
    """`cfg.soup` as its method's dataclass; a bad key, type or value is a UserError naming `soup.<key>`."""
    raw = OmegaConf.to_container(options, resolve=True) if isinstance(options, DictConfig) else dict(options)
    method = get_method(str(raw.get("name")))
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method.params), raw))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        reason = str(err).splitlines()[0]
        raise UserError(f"soup.{err.full_key}: {reason} ({method.name} takes {param_names(method.params)})") from None
    except ValueError as err:  # the dataclass's own checks name the field first
        raise UserError(f"soup.{err}") from None


def param_names(params: type[SoupParams]) -> str:
    return ", ".join(f.name for f in dataclasses.fields(params))
