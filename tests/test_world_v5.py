"""World version 5, the character world: classes, x-height, tokenizer, sizes; and resumable pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import datasets
from datasets.world import render, sets, templates
from datasets.world.foundation import init_model
from datasets.world.pretrain import PretrainConfig, pretrain
from models.factory import create_clip, get_tokenizer
from models.world_tokenizer import UNK


def test_classes_are_digits_and_both_cases_named_by_known_words():
    g = render.CHARACTERS
    assert g.n == 62 and g.chars[:10] == "0123456789" and g.chars[10] == "A" and g.chars[36] == "a" and g.chars[-1] == "z"
    assert g.names[0] == "zero" and g.names[10] == "upper alfa" and g.names[61] == "lower zulu" and len(set(g.names)) == 62
    tokenizer = get_tokenizer("TinyCLIP-Chars")
    for text in [*g.names, *(t.format(n) for t in templates(g) for n in g.names[:3])]:
        assert UNK not in tokenizer.encode(text), text
    # the classifier's vocabulary check asks the tokenizer it was given (the digit world's lacks "alfa")
    assert tokenizer.unknown_words("a photo of the character upper alfa") == []
    assert get_tokenizer("TinyCLIP").unknown_words("a photo of the character upper alfa") == ["character", "upper", "alfa"]
    model, _, _ = create_clip("TinyCLIP-Chars")
    assert model.vocab_size == tokenizer.vocab_size  # the JSON config matches the tokenizer


def test_x_height_is_kept_so_case_is_visible():
    # with the x-height kept, lower-case o is shorter than O and sits on the same baseline (same bottom row);
    # the digit world scales every glyph to the full height instead
    font = "DejaVuSans.ttf"

    def rows(mask):
        filled = np.nonzero(mask.max(axis=1) > 0.5)[0]
        return filled[0], filled[-1]

    (upper_top, upper_bottom), (lower_top, lower_bottom) = (rows(render.glyph_mask(font, c, keep_x_height=True)) for c in "Oo")
    assert lower_bottom == pytest.approx(upper_bottom, abs=1)
    assert (lower_bottom - lower_top) < 0.85 * (upper_bottom - upper_top)
    scaled = [rows(render.glyph_mask(font, c)) for c in "Oo"]
    assert abs((scaled[0][1] - scaled[0][0]) - (scaled[1][1] - scaled[1][0])) <= 2


@pytest.fixture(scope="module")
def small_v5(tmp_path_factory):
    """The small character world, built once for this module (a build renders every set; seconds of CPU)."""
    root = tmp_path_factory.mktemp("world_v5")
    sets.build_world(root, "small", 0, workers=1, version=5)
    return root


def test_small_character_world_labels_and_captions(small_v5):
    cfg = OmegaConf.create(
        {"name": "world", "root": str(small_v5), "scale": "small", "seed": 0, "version": 5, "classes": "world", "heldout": "heldout",
         "id": "photo", "shifts": ["photo_v2", "rendition", "sketch", "unusual", "hard"], "batch_size": 100, "workers": 0}
    )  # fmt: skip
    train = sets.load_set(small_v5, "small", 0, "train", version=5)
    assert len(train.labels) == sets.VERSIONS[5].scales["small"]["train"] and train.labels.max() < 62
    assert len(np.unique(train.labels)) > 55  # 1,000 draws over 62 classes
    assert all(f"character {render.CHARACTERS.names[y]}" in c for c, y in zip(train.captions, train.labels))
    info = datasets.class_info(cfg)
    assert info.classes_id == "world-v5" and info.classnames[36] == "lower alfa"
    assert info.templates[0] == "a photo of the character {}."
    assert (small_v5 / "small-seed0-v5" / "train.npz").exists()  # its own cache folder
    with pytest.raises(Exception, match="data.version"):
        datasets.class_info(OmegaConf.merge(cfg, {"version": 9}))


def test_demo_scale_sizes():
    demo = sets.VERSIONS[5].scales["demo"]
    assert demo["train"] == 80 * 62 and demo["heldout"] == 50 * 62
    assert all(demo[s] >= 10_000 for s in ("photo", "photo_v2", "rendition", "sketch", "unusual", "hard"))


def test_a_cache_of_other_set_sizes_is_generated_again(small_v5, tmp_path, monkeypatch, caplog):
    """A world cached by a release with other set sizes (the train set had 500 photos) is not read as this
    one: every set is generated again, the hard set included (it is filtered by a classifier fit on train)."""
    version = sets.VERSIONS[5]
    older = {**version.scales, "small": {**version.scales["small"], "train": 500}}
    monkeypatch.setattr(sets, "VERSIONS", {**sets.VERSIONS, 5: sets.WorldVersion(version.glyphs, older)})
    folder = sets.build_world(tmp_path, "small", 0, workers=1, version=5)
    old_hard = sets.load_set(tmp_path, "small", 0, "hard", version=5)
    assert len(sets.load_set(tmp_path, "small", 0, "train", version=5).labels) == 500
    monkeypatch.undo()
    with caplog.at_level("WARNING"):
        assert len(sets.load_set(tmp_path, "small", 0, "train", version=5).labels) == 1000
    assert "other sizes (train)" in caplog.text and not (folder / "DONE").exists()
    sets.build_world(tmp_path, "small", 0, workers=1, version=5)
    assert not np.array_equal(sets.load_set(tmp_path, "small", 0, "hard", version=5).images, old_hard.images)
    fresh = sets.cache_dir(small_v5, "small", 0, version=5)  # a world built where no other cache was
    for name in sets.SCALES["small"]:
        assert np.array_equal(np.load(fresh / f"{name}.npz")["images"], np.load(folder / f"{name}.npz")["images"]), name


def test_killed_pretraining_resumes_to_the_same_model(small_v5, tmp_path):
    torch.set_num_threads(1)
    corpus = sets.load_set(small_v5, "small", 0, "corpus", version=5)
    tokenizer = get_tokenizer("TinyCLIP-Chars")
    plain = PretrainConfig(steps=6, batch_size=32, warmup_steps=2)
    model, _ = init_model("TinyCLIP-Chars", 0)
    whole = pretrain(model, corpus, tokenizer, plain)

    class Killed(Exception):
        pass

    def kill_after_step_3(step: int, loss: float) -> None:
        if step == 3:
            raise Killed

    resumable = PretrainConfig(steps=6, batch_size=32, warmup_steps=2, resume_file=str(tmp_path / "resume.pt"), checkpoint_every=2)
    first, _ = init_model("TinyCLIP-Chars", 0)
    with pytest.raises(Killed):
        pretrain(first, corpus, tokenizer, resumable, on_step=kill_after_step_3)  # saved after step 2 (2 steps done)
    again, _ = init_model("TinyCLIP-Chars", 1)  # another init: the resume file must replace it
    resumed = pretrain(again, corpus, tokenizer, resumable)
    assert resumed.losses == whole.losses
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_foundation_is_written_in_the_configured_dtype():
    from datasets.world.foundation import foundation_state
    from models.errors import UserError

    model, _ = init_model("TinyCLIP-Chars", 0)
    state = foundation_state(model, "float16")
    original = model.state_dict()
    for name, tensor in state.items():
        if original[name].is_floating_point():
            assert tensor.dtype == torch.float16 and torch.equal(tensor, original[name].half()), name
        else:  # BatchNorm's step counters stay integers
            assert torch.equal(tensor, original[name]), name
    assert any(not t.is_floating_point() for t in state.values())
    with pytest.raises(UserError, match="save_dtype"):
        foundation_state(model, "bfloat16")


def test_a_bad_save_dtype_is_refused_before_pretraining(tmp_path):
    from conftest import run_in_process  # the stage's real command: tests/test_cli.py (--help) and the demo

    foundation = tmp_path / "f.safetensors"
    result = run_in_process(
        "datasets.world", "task=pretrain", "pretrain.save_dtype=int8", f"paths.cache={tmp_path}", f"foundation={foundation}"
    )
    assert result.returncode == 2 and "pretrain.save_dtype: 'int8'" in result.stderr, result.stderr[-500:]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "world").exists() and not foundation.exists()  # refused before the world was built or trained on
