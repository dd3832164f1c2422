"""models.evaluate: shared decoding, per-class counts, sharding across gloo ranks, concurrent record writers."""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest
import torch
import torch.distributed as dist
from conftest import HANG_S, mark_done
from torch import nn
from torch.utils.data import Dataset

from datasets import EvalSet, UnreadableImage
from models.errors import UserError
from models.evaluate import accuracies, score_models, shard_range
from models.results import append_records, load_results, make_record
from tests.test_eval_helpers import run_in_processes

# A constructed problem: 11 "images" x_i = i, 3 classes; each model is a fixed linear map, so every
# prediction is known by hand.
FEATURES = torch.arange(11, dtype=torch.float32).view(11, 1)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])


class CountingSet(Dataset):
    """Counts how often each example is decoded (shared decoding must decode once per pass)."""

    def __init__(self, bad: frozenset[int] = frozenset()):
        self.calls = 0
        self.bad = bad

    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, i: int):
        self.calls += 1
        if i in self.bad:
            return UnreadableImage(f"/data/img{i}.jpg", "truncated"), int(LABELS[i])
        return FEATURES[i], int(LABELS[i])


def linear(weights: list[float], bias: list[float]) -> nn.Module:
    layer = nn.Linear(1, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights).view(3, 1))
        layer.bias.copy_(torch.tensor(bias))
    return layer


# model A predicts class 2 for x >= 5 else class 0 (logits [5-x... ]); model B always class 1
MODEL_A = ([-1.0, 0.0, 1.0], [5.0, -100.0, -4.5])  # logit0 = 5 - x, logit2 = x - 4.5: class 2 iff x > 4.75
MODEL_B = ([0.0, 0.0, 0.0], [0.0, 1.0, 0.0])


def expected_hits(model: str) -> torch.Tensor:
    predictions = torch.where(FEATURES.view(-1) > 4.75, 2, 0) if model == "A" else torch.ones(11, dtype=torch.long)
    return predictions == LABELS


def test_shared_decoding_decodes_once_and_counts_per_class():
    dataset = CountingSet()
    eval_set = EvalSet("toy", "id", dataset, ["a", "b", "c"])
    scores = score_models([linear(*MODEL_A), linear(*MODEL_B)], eval_set, batch_size=4, amp=False, keep_logits=True)
    assert dataset.calls == 11  # two models, one decode per example
    for result, name in zip(scores, "AB"):
        hits = expected_hits(name)
        assert result.correct == int(hits.sum()) and result.n == 11
        assert result.per_class_correct.tolist() == [int(hits[LABELS == c].sum()) for c in range(3)]
        assert result.per_class_n.tolist() == [4, 4, 3]
        assert result.logits.dtype == torch.float16 and result.labels.tolist() == LABELS.tolist()
    assert accuracies([linear(*MODEL_A)], eval_set, batch_size=5) == [(int(expected_hits("A").sum()), 11)]


def test_projection_is_applied_before_argmax():
    eval_set = EvalSet("toy", "shift", CountingSet(), ["c", "a", "b"], project_logits=lambda x: x[:, [2, 0, 1]])
    (result,) = score_models([linear(*MODEL_A)], eval_set, batch_size=3, amp=False)
    # projected classes: 0 <- original 2, 1 <- original 0; labels are read in the projected space
    predictions = torch.where(FEATURES.view(-1) > 4.75, 0, 1)
    assert result.correct == int((predictions == LABELS).sum())


def test_unreadable_images_raise_or_are_skipped():
    eval_set = EvalSet("toy", "id", CountingSet(bad=frozenset({3, 4})), ["a", "b", "c"])
    with pytest.raises(UserError, match=r"/data/img3.jpg: unreadable image \(truncated\)"):
        score_models([linear(*MODEL_B)], eval_set, batch_size=4, amp=False)
    (result,) = score_models([linear(*MODEL_B)], eval_set, batch_size=4, amp=False, skip_bad_images=True)
    assert result.skipped == ["/data/img3.jpg", "/data/img4.jpg"] and result.n == 9
    keep = torch.tensor([i not in (3, 4) for i in range(11)])
    assert result.correct == int(expected_hits("B")[keep].sum())


def test_shards_cover_the_set_once():
    for n, world in [(11, 2), (11, 4), (3, 4), (0, 2)]:
        shards = [list(shard_range(n, rank, world)) for rank in range(world)]
        assert sum(shards, []) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        eval_set = EvalSet("toy", "id", CountingSet(bad=frozenset({9})), ["a", "b", "c"])
        scores = score_models(
            [linear(*MODEL_A), linear(*MODEL_B)], eval_set, batch_size=2, amp=False, keep_logits=True, skip_bad_images=True
        )
        queue.put(
            (
                rank,
                [(s.per_class_correct.tolist(), s.per_class_n.tolist(), s.skipped, s.logits.tolist(), s.labels.tolist()) for s in scores],
            )
        )
    finally:
        dist.destroy_process_group()


def test_gloo_ranks_agree_with_one_process():
    eval_set = EvalSet("toy", "id", CountingSet(bad=frozenset({9})), ["a", "b", "c"])
    single = score_models([linear(*MODEL_A), linear(*MODEL_B)], eval_set, batch_size=2, amp=False, keep_logits=True, skip_bad_images=True)
    expected = [(s.per_class_correct.tolist(), s.per_class_n.tolist(), s.skipped, s.logits.tolist(), s.labels.tolist()) for s in single]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=HANG_S) for _ in processes)
    for process in processes:
        process.join(timeout=HANG_S)
        assert process.exitcode == 0
    assert results[0] == expected and results[1] == expected  # every rank holds the whole set's numbers


def _writer(run_dir: str, index: int) -> None:
    records = [
        make_record(model_id=f"model_{index}", kind="individual", dataset=name, role="shift", correct=index, n=100)
        for name in ("a", "b", "c")
    ]
    for record in records:  # one append per set, as the eval stage does
        append_records(run_dir, [record])
    append_records(os.path.join(os.path.dirname(run_dir), "..", "shared"), records)  # and all into one file, under the lock


def test_sixteen_concurrent_writers_lose_no_records(tmp_path):
    run_in_processes(_writer, [(str(tmp_path / "runs" / f"job{i}"), i) for i in range(16)])
    mark_done(*(tmp_path / "runs").iterdir(), tmp_path / "shared")
    table = load_results(tmp_path / "runs")
    assert len(table) == 16 * 3 and sorted(set(table["model_id"])) == sorted(f"model_{i}" for i in range(16))
    assert {(m, d) for m, d in zip(table["model_id"], table["dataset"])} == {(f"model_{i}", d) for i in range(16) for d in "abc"}
    shared = load_results(tmp_path / "shared" / "results.jsonl")
    assert len(shared) == 48 and shared.groupby("model_id")["top1"].first().to_dict() == {f"model_{i}": i / 100 for i in range(16)}


def test_image_batches_run_channels_last_with_the_contiguous_outputs():
    """iter_logits hands conv towers NHWC batches (faster on CPU); the tiny CLIP's and ViT-B/32's logits must
    equal a plain forward of the same contiguous images. Bit for bit on some CPUs; on others (an AMD EPYC
    here) oneDNN's NHWC convolution rounds differently, by under 1e-7 on logits of size 0.1: float32
    rounding, far below any accuracy difference (docs/benchmarks.md, "Reproducibility")."""
    from models.classifier import ImageClassifier, embed_dim_of
    from models.evaluate import iter_logits
    from models.factory import create_clip

    class Images(Dataset):
        def __init__(self, size: int):
            self.x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(size))

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int):
            return self.x[i], 0

    seen = []
    for arch, size in (("TinyCLIP-Chars", 32), ("ViT-B-32", 224)):
        torch.manual_seed(0)
        clip_model, _, _ = create_clip(arch, None)
        model = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), 3).eval()
        model.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        images = Images(size)
        with torch.inference_mode():
            expected = model(images.x.contiguous())
        (logits,), _ = next(iter_logits([model], EvalSet("set", "id", images, ["a", "b", "c"]), batch_size=6))
        assert torch.allclose(logits, expected, rtol=0, atol=1e-6), (arch, (logits - expected).abs().max())
    assert seen == [False, True, False, True]  # the reference forward contiguous, iter_logits's NHWC
