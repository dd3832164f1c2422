"""Checkpoint format: safetensors + JSON metadata, atomic writes, no unpickling of code."""

from __future__ import annotations

import os
import pickle
import stat

import pandas as pd
import pytest
import torch

from models.atomic import atomic_path
from models.checkpoint import (
    CheckpointMeta,
    convert_foreign_state_dict,
    import_checkpoint,
    iter_tensors,
    load_checkpoint,
    read_meta,
    read_tensors,
    save_checkpoint,
    sha256_prefix,
    to_open_clip_state_dict,
)
from models.errors import UserError


def small_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "visual.proj": torch.randn(8, 4, generator=g),
        "visual.ln_post.weight": torch.ones(8),
        "head.weight": torch.randn(3, 4, generator=g),
        "head.bias": torch.zeros(3),
    }


def meta(**overrides) -> CheckpointMeta:
    fields = dict(
        arch="TinyCLIP", pretrained="foundation.safetensors", num_classes=3, classes="world", kind="individual", hparams={"lr": 1e-5}
    )
    fields.update(overrides)
    return CheckpointMeta(**fields)


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    state = small_state()
    ingredients = [{"path": "a.safetensors", "sha256": "abc", "weight": 0.5}]
    path = save_checkpoint(tmp_path / "m.safetensors", state, meta(kind="soup", ingredients=ingredients))
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key])
    assert loaded_meta.kind == "soup"
    assert loaded_meta.hparams == {"lr": 1e-5}
    assert loaded_meta.ingredients == ingredients
    assert loaded_meta.format == "model-soups-ckpt/1"
    assert read_meta(path) == loaded_meta
    assert dict(iter_tensors(path)).keys() == state.keys()


def test_sha256_prefix_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"model soups")
    assert sha256_prefix(path) == hashlib.sha256(b"model soups").hexdigest()[:12]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", small_state(), meta())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="m.safetensors"):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(UserError, match="nope.safetensors: checkpoint not found"):
        read_meta(tmp_path / "nope.safetensors")


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="no 'model_soups' metadata"):
        read_meta(tmp_path / "plain.safetensors")


class Payload:
    """Unpickling this would run code: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "model_0.pt"
    with open(path, "wb") as handle:
        pickle.dump({"classification_head.weight": torch.zeros(2, 2), "evil": Payload()}, handle)
    with pytest.raises(UserError, match="refused to unpickle"):
        import_checkpoint(path)


def test_official_layout_imports_to_classifier_keys(tmp_path):
    official = {
        "model.visual.conv1.weight": torch.ones(2, 3, 1, 1, dtype=torch.float16),
        "model.token_embedding.weight": torch.ones(5, 2),
        "model.logit_scale": torch.tensor(4.6),
        "classification_head.weight": torch.full((3, 2), 2.0),
        "classification_head.bias": torch.zeros(3),
    }
    path = tmp_path / "model_7.pt"
    torch.save(official, path)
    state, has_head = import_checkpoint(path)
    assert has_head
    assert set(state) == {"visual.conv1.weight", "head.weight", "head.bias"}
    assert state["visual.conv1.weight"].dtype == torch.float32
    assert torch.equal(state["head.weight"], torch.full((3, 2), 2.0))


def test_open_clip_layout_with_module_prefix_imports_without_head():
    state, has_head = convert_foreign_state_dict(
        {"state_dict": {"module.visual.proj": torch.ones(2, 2), "module.text_projection": torch.ones(2, 2)}}, "x"
    )
    assert not has_head
    assert set(state) == {"visual.proj"}


def test_export_replaces_only_the_image_tower():
    clip_state = {"visual.proj": torch.zeros(2), "text_projection": torch.ones(2)}
    full = to_open_clip_state_dict({"visual.proj": torch.full((2,), 3.0), "head.weight": torch.ones(1)}, clip_state)
    assert set(full) == {"visual.proj", "text_projection"}
    assert torch.equal(full["visual.proj"], torch.full((2,), 3.0))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_write_gets_the_mode_a_plain_open_gets(tmp_path, umask):
    """mkstemp's private 0600 must not leak into results shared on a cluster filesystem."""
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        with atomic_path(tmp_path / "atomic.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def _write_checkpoint(folder):
    save_checkpoint(folder / "out", small_state(), meta())


def _write_logits(folder):
    from models.logits import save_logits

    os.replace(save_logits(folder, "m", "photo", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)), folder / "out")


def _write_train_state(folder):
    from finetune import state

    model = torch.nn.Linear(2, 2)
    os.replace(state.save_state(folder, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, {"loss": 0.0}), folder / "out")


def _write_official_results(folder):
    from models.results import make_record, write_official_results

    record = make_record(model_id="m", kind="individual", dataset="ImageNet", role="id", correct=1, n=2)
    write_official_results(pd.DataFrame([record]), folder / "out")


def _write_records(folder):
    from models.results import append_records, make_record

    os.replace(
        append_records(folder, [make_record(model_id="m", kind="individual", dataset="d", role="id", correct=1, n=2)]), folder / "out"
    )


def _export_open_clip(folder):
    from safetensors.torch import save_file

    from eval.convert import export_open_clip
    from models.classifier import classifier_from_clip
    from models.factory import create_clip

    clip_model, _, _ = create_clip("TinyCLIP", None)
    save_file(clip_model.state_dict(), str(folder / "clip.safetensors"))
    classifier = classifier_from_clip(clip_model, num_classes=3)
    save_checkpoint(folder / "c.safetensors", classifier.state_dict(), meta(arch="TinyCLIP", pretrained=str(folder / "clip.safetensors")))
    os.replace(export_open_clip(str(folder / "c.safetensors"), folder / "export.safetensors", None), folder / "out")


WRITERS = [_write_checkpoint, _write_logits, _write_train_state, _write_official_results, _write_records, _export_open_clip]


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__.lstrip("_"))
def test_every_writer_gives_the_mode_a_plain_open_gives(tmp_path, umask, writer):
    old = os.umask(umask)
    try:
        writer(tmp_path)
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o666 & ~umask


def test_tensors_read_back_are_aligned_wherever_the_header_ends(tmp_path):
    """The data offset moves with the metadata's length (a checkout path in it, say); the tensors
    handed out must not, or MKL's products, which round by alignment, change with the checkout path."""
    state = small_state()
    for pad in range(8):
        path = save_checkpoint(tmp_path / f"m{pad}.safetensors", state, meta(pretrained="x" * pad + "foundation.safetensors"))
        for key, tensor in iter_tensors(path):
            assert tensor.data_ptr() % 64 == 0, (pad, key)
            assert torch.equal(tensor, state[key])


def test_the_one_reader_returns_what_safetensors_itself_reads(tmp_path):
    """`read_tensors` (readinto, no memory map) against safetensors' own `load_file`, for every dtype the
    project writes, a scalar and an empty tensor: same keys, dtypes, shapes and bytes, and aligned."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(5, 3, generator=g),
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(6).view(2, 3),
        "i32": torch.arange(5, dtype=torch.int32),
        "u8": torch.arange(9, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"note": "x" * 13})
    reference = load_file(str(tmp_path / "t.safetensors"))
    ours = read_tensors(tmp_path / "t.safetensors")
    assert list(ours) == list(reference)  # key order too (a dict's order reaches every loop over it)
    for key, tensor in reference.items():
        assert ours[key].dtype == tensor.dtype and ours[key].shape == tensor.shape, key
        assert torch.equal(ours[key], tensor), key
        assert ours[key].numel() == 0 or ours[key].data_ptr() % 64 == 0, key


@pytest.mark.parametrize(
    "header, phrase",
    [
        ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, "holds 12 bytes, its shape needs 16"),
        ({"x": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, "unsupported dtype"),
        ({"x": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, "truncated: expected"),
        ([1, 2], "not a safetensors header"),
    ],
)
def test_a_malformed_safetensors_file_is_one_clear_error(tmp_path, header, phrase):
    import json
    import struct

    raw = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with pytest.raises(UserError, match=rf"bad.safetensors: .*{phrase}"):
        read_tensors(tmp_path / "bad.safetensors")


def test_logits_files_round_trip_through_the_one_reader(tmp_path):
    from models.logits import load_logits, save_logits

    logits, labels = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3, 1, 2, 2, 0])
    path = save_logits(tmp_path, "model_0", "photo", logits, labels)
    got_logits, got_labels = load_logits(path)
    assert torch.equal(got_logits, logits) and torch.equal(got_labels, labels)


def test_a_checkpoint_streams_in_sorted_key_order(tmp_path):
    """Key order reaches every loop over a loaded state dict; checkpoints come back sorted by key (as
    safetensors' `safe_open(...).keys()` lists them), whatever the order in the file."""
    from safetensors import safe_open

    state = {"visual.b": torch.zeros(3, dtype=torch.float16), "head.weight": torch.ones(3, 4), "head.bias": torch.zeros(3)}
    state["visual.a"] = torch.zeros(2, dtype=torch.int64)
    path = save_checkpoint(tmp_path / "m.safetensors", state, meta())
    with safe_open(str(path), "pt") as handle:
        expected = list(handle.keys())
    assert expected == sorted(state)
    assert [key for key, _ in iter_tensors(path)] == expected
    assert list(load_checkpoint(path)[0]) == expected
