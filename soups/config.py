"""`cfg.soup` as its method's typed, checked parameters (the dataclass soups.registry names).

Hydra has already typed `cfg.soup` while composing (models/schemas.py); this also checks the values
(`__post_init__`) and takes a config built by hand (a dict, a test) the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.errors import UserError
from models.schemas import SoupParams
from soups.methods import get_method


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
