"""Head initialisation: the zero-shot head equals open_clip's/clip_benchmark's classifier; LP solves its problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune import linear_probe
from models.classifier import classifier_from_clip, zeroshot_head_weight
from models.factory import create_clip

CLASSNAMES = ["zero", "one", "two", "three"]
TEMPLATES = ["a photo of the digit {}.", "a sketch of the digit {}.", "the digit {}."]


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_clip("TinyCLIP", pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(100.0)))  # CLIP's trained scale, to check the scaling
    return model, tokenizer


def test_zeroshot_head_is_clip_benchmarks_classifier_times_logit_scale(tiny_clip):
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    model, tokenizer = tiny_clip
    ours = zeroshot_head_weight(model, tokenizer, CLASSNAMES, TEMPLATES)
    peer = zero_shot_classifier(
        model, tokenizer, CLASSNAMES, [t.replace("{}", "{c}") for t in TEMPLATES], "cpu", amp=False
    )  # [dim, classes]
    assert torch.allclose(ours, 100.0 * peer.T, atol=1e-4)


def test_zeroshot_head_by_hand_and_the_classifier_gives_clip_logits(tiny_clip):
    model, tokenizer = tiny_clip
    rows = []
    with torch.no_grad():
        for name in CLASSNAMES:
            text = F.normalize(model.encode_text(tokenizer([t.format(name) for t in TEMPLATES])), dim=-1)
            rows.append(F.normalize(text.mean(0), dim=-1))
    by_hand = 100.0 * torch.stack(rows)
    head = zeroshot_head_weight(model, tokenizer, CLASSNAMES, TEMPLATES)
    assert torch.allclose(head, by_hand, atol=1e-4)

    classifier = classifier_from_clip(model, head).eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clip_logits = 100.0 * F.normalize(model.encode_image(images), dim=-1) @ torch.stack(rows).T
        assert torch.allclose(classifier(images), clip_logits, atol=1e-3)


def overlapping_blobs(n: int = 300, dim: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=generator)
    features = F.normalize(centres[labels] + 1.5 * torch.randn(n, dim, generator=generator), dim=-1)
    return features, labels


def test_linear_probe_reaches_the_lbfgs_optimum():
    """The fitted head's loss equals that of an independent solver (L-BFGS) on the same convex problem."""
    features, labels = overlapping_blobs()
    weight, bias = linear_probe.fit_linear_head(features, labels, torch.zeros(3, 8), torch.zeros(3), steps=300, lr=0.1, weight_decay=0.0)

    w = torch.zeros(3, 8, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    solver = torch.optim.LBFGS([w, b], lr=1, max_iter=100, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        solver.zero_grad()
        loss = F.cross_entropy(features @ w.T + b, labels)
        loss.backward()
        return loss

    solver.step(closure)
    optimum = float(F.cross_entropy(features @ w.detach().T + b.detach(), labels))
    ours = float(F.cross_entropy(features @ weight.T + bias, labels))
    start = float(F.cross_entropy(torch.zeros(300, 3), labels))
    assert ours == pytest.approx(optimum, abs=1e-3) and optimum < start - 0.05


def test_the_lp_fit_from_a_wrong_zero_shot_head_matches_scikit_learn():
    """The stage's LP fit, with its default settings, from a sharp zero-shot head that reads the classes wrong
    (rows of norm 27.5, the tiny CLIP's logit scale, pointing at the wrong class centres: a dataset the model
    cannot read zero-shot), against scikit-learn's LogisticRegression on the same features and the same
    L2-penalised objective (C = 1 / (weight_decay · n); the intercept unpenalised in both). The AdamW fit it
    replaces stopped near the zero-shot head, below chance: 0.3 per coordinate of movement in 300 steps at
    lr 1e-3 against coordinates of ~10."""
    from sklearn.linear_model import LogisticRegression

    from models.schemas import LinearProbe

    features, labels = overlapping_blobs(n=300, dim=8, classes=3)
    centres = torch.stack([F.normalize(features[labels == c].mean(0), dim=0) for c in range(3)])
    zero_shot = 27.5 * centres[[1, 2, 0]]  # each class's row points at the next class's centre
    assert float(((features @ zero_shot.T).argmax(1) == labels).float().mean()) < 1 / 3
    probe = LinearProbe()
    weight, bias = linear_probe.fit_linear_head(features, labels, zero_shot, torch.zeros(3), probe.steps, probe.lr, probe.weight_decay)

    reference = LogisticRegression(C=1 / (probe.weight_decay * len(labels)), tol=1e-10, max_iter=10_000).fit(
        features.numpy(), labels.numpy()
    )
    ours = torch.softmax(features @ weight.T + bias, dim=1)
    theirs = torch.as_tensor(reference.predict_proba(features.numpy()), dtype=torch.float32)
    assert torch.allclose(ours, theirs, atol=2e-3), float((ours - theirs).abs().max())
    assert torch.allclose(weight, torch.as_tensor(reference.coef_, dtype=torch.float32), rtol=1e-2, atol=1e-2)
    accuracy = float((ours.argmax(1) == labels).float().mean())
    assert accuracy == pytest.approx(reference.score(features.numpy(), labels.numpy())) and accuracy > 0.6


def test_feature_cache_computes_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(4, 2), torch.arange(4)

    first = linear_probe.cached_features(tmp_path, {"arch": "a"}, compute)
    again = linear_probe.cached_features(tmp_path, {"arch": "a"}, compute)
    linear_probe.cached_features(tmp_path, {"arch": "b"}, compute)
    assert len(calls) == 2 and torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_feature_cache_hands_back_aligned_features_whatever_the_key(tmp_path):
    """The key's length moves the data offset in the cache file. Read-back features must sit where a
    fresh computation's would (64-byte aligned), so the LP head fitted from the cache is the same
    bit for bit as the one fitted from fresh features: MKL's products round by alignment."""
    features, labels = overlapping_blobs()
    fresh = linear_probe.fit_linear_head(features, labels, torch.zeros(3, 8), torch.zeros(3), steps=20, lr=0.1, weight_decay=0.0)
    for pad in range(8):
        key = {"path": "x" * pad}
        linear_probe.cached_features(tmp_path, key, lambda: (features, labels))
        cached, cached_labels = linear_probe.cached_features(tmp_path, key, lambda: pytest.fail("recomputed"))
        assert cached.data_ptr() % 64 == 0 and torch.equal(cached, features), pad
        head = linear_probe.fit_linear_head(cached, cached_labels, torch.zeros(3, 8), torch.zeros(3), steps=20, lr=0.1, weight_decay=0.0)
        assert torch.equal(head[0], fresh[0]) and torch.equal(head[1], fresh[1]), pad


def test_the_zero_shot_head_is_computed_once_per_text_tower_and_prompts(tmp_path, monkeypatch):
    """A sweep's zero-shot and LP init jobs build the same head: the second reads the first's from the cache,
    equal bit for bit to a fresh computation; other prompts or another text tower compute it again, another
    image tower does not."""
    from omegaconf import OmegaConf

    from datasets import ClassInfo
    from finetune import train

    torch.manual_seed(0)
    clip_model, _, tokenizer = create_clip("TinyCLIP", None)
    cfg = OmegaConf.create({"model": {"arch": "TinyCLIP"}, "paths": {"cache": str(tmp_path)}})
    info = ClassInfo(["seven", "eight"], ["a photo of a {}.", "a {}."], "digits")
    calls = []
    monkeypatch.setattr(train, "zeroshot_head_weight", lambda *args: calls.append(args[3]) or zeroshot_head_weight(*args))

    def head(info: ClassInfo) -> torch.Tensor:
        built = train.zeroshot_head(cfg, clip_model, tokenizer, info)
        assert torch.equal(built, zeroshot_head_weight(clip_model, tokenizer, info.classnames, info.templates))
        return built

    head(info), head(info)
    assert len(calls) == 1 and len(list((tmp_path / "heads").iterdir())) == 1
    head(ClassInfo(["seven", "eight"], ["a photo of a {}."], "digits"))  # other prompts
    assert len(calls) == 2
    with torch.no_grad():
        clip_model.visual.conv1.weight.add_(1.0)  # the image tower: the same head
        head(info)
        assert len(calls) == 2
        clip_model.token_embedding.weight.add_(0.1)  # the text tower: another head
        head(info)
    assert len(calls) == 3
