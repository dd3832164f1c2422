"""models.factory: open_clip's chatter is filtered, real problems are not."""

from __future__ import annotations

import logging

import open_clip
import pytest

from models.errors import UserError
from models.factory import _OpenClipChatter, create_clip


def _record(pathname: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("root", level, pathname, 1, message, None, None)


def test_random_init_build_logs_nothing_from_open_clip(caplog):
    caplog.set_level(logging.DEBUG)
    create_clip("TinyCLIP")
    assert [r.getMessage() for r in caplog.records if "open_clip" in r.pathname] == []


def test_filter_keeps_open_clip_warnings_and_other_modules():
    inside = open_clip.__file__
    chatter = _OpenClipChatter(expect_random_init=True)
    assert not chatter.filter(_record(inside, logging.INFO, "Loaded built-in TinyCLIP model config."))
    assert not chatter.filter(_record(inside, logging.WARNING, "No pretrained weights loaded for model 'X'."))
    assert chatter.filter(_record(inside, logging.WARNING, "some other warning"))
    assert chatter.filter(_record("/elsewhere/train.py", logging.INFO, "epoch 1"))
    # When the caller asked for pretrained weights, a random init is news and stays visible.
    assert _OpenClipChatter(expect_random_init=False).filter(
        _record(inside, logging.WARNING, "No pretrained weights loaded for model 'X'.")
    )


def test_filter_is_removed_after_the_build():
    create_clip("TinyCLIP")
    assert not any(isinstance(f, _OpenClipChatter) for f in logging.getLogger().filters)


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="model.arch"):
        create_clip("TinyCLIPP")
