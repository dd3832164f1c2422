"""`from soups import ...`: the library on plain state dicts and on checkpoint paths, against hand
computations and an independent greedy loop; its docstring examples and the README's snippet give the values they state."""

from __future__ import annotations

import doctest
import itertools
import re

import pytest
import torch
from conftest import HANG_S, REPO

import soups
import soups.library
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.errors import UserError


def states(values):
    return [{"w": torch.tensor([float(v), 2.0 * v]), "count": torch.tensor(3)} for v in values]


def test_the_docstring_examples_run():
    failed, attempted = doctest.testmod(soups.library, raise_on_error=False)
    assert attempted >= 5 and failed == 0


def test_the_readme_snippet_runs_and_prints_what_it_says(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    (snippet,) = re.findall(r"## Use as a library\n.*?```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(snippet, "README.md", "exec"), names)  # noqa: S102 - the README's own example, run as a user would
    # By hand: the scores -|w - 1.1| are -0.2, -0.1, -0.2 (in float32, model 2's is the larger of the tie), so
    # best first is [1, 2, 0]; each addition brings the mean closer to 1.1 (1.0 -> 1.15 -> 3.2 / 3), so all stay.
    assert capsys.readouterr().out == "[1, 2, 0]\n"
    assert "print(chosen)  # [1, 2, 0]" in snippet  # the README says what it prints
    mean = torch.full((2, 2), 3.2 / 3)
    torch.testing.assert_close(names["uniform"]["head.weight"], mean)
    torch.testing.assert_close(names["greedy"]["head.weight"], mean)
    torch.testing.assert_close(names["robust"]["head.weight"], (torch.full((2, 2), 1.0) + mean) / 2)  # alpha 0.5 from models[1]


def test_uniform_soup_is_the_mean_from_dicts_and_from_files(tmp_path):
    ingredients = states([1, 2, 6])
    expected = torch.tensor([3.0, 6.0])
    assert torch.equal(soups.uniform_soup(ingredients)["w"], expected)
    paths = [
        save_checkpoint(tmp_path / f"m{i}.safetensors", s, CheckpointMeta("TinyCLIP", None, 1, "toy", "individual"))
        for i, s in enumerate(ingredients)
    ]
    from_files = soups.uniform_soup(paths)
    assert torch.equal(from_files["w"], expected) and int(from_files["count"]) == 3


def independent_greedy(values, score, accept_ties=False):
    """The paper's Recipe 1 written out plainly: sort by own score (ties: later first), keep improvements."""
    order = sorted(range(len(values)), key=lambda i: (score([values[i]]), i), reverse=True)
    soup, best = [order[0]], score([values[order[0]]])
    for i in order[1:]:
        candidate = score([values[j] for j in [*soup, i]])
        if candidate > best or (accept_ties and candidate == best):
            soup, best = [*soup, i], candidate
    return soup


@pytest.mark.parametrize("values", list(itertools.permutations([0.0, 1.0, 3.0, 0.5])))
@pytest.mark.parametrize("target", [0.7, 2.1])
def test_greedy_soup_equals_an_independent_greedy_loop(values, target):
    def score_of(ws):  # held-out "accuracy": closeness of the averaged weight to a target
        return -abs(sum(ws) / len(ws) - target)

    soup, chosen = soups.greedy_soup(states(values), score=lambda s: -abs(float(s["w"][0]) - target))
    expected = independent_greedy(values, score_of)
    assert chosen == expected
    assert float(soup["w"][0]) == pytest.approx(sum(values[i] for i in expected) / len(expected))


def test_a_score_may_be_a_python_number_or_a_scalar_tensor():
    ingredients = states([0.0, 1.0, 4.0])
    as_float = soups.greedy_soup(ingredients, score=lambda s: -abs(float(s["w"][0]) - 0.6))[1]
    as_tensor = soups.greedy_soup(ingredients, score=lambda s: -(s["w"][0] - 0.6).abs())[1]
    assert as_float == as_tensor == [1, 0]
    assert [float(s["w"][0]) for s in ingredients] == [0.0, 1.0, 4.0]  # the caller's state dicts are left untouched


def test_greedy_soup_breaks_ties_as_the_official_code_and_accepts_ties_with_ge():
    ingredients = states([1.0, 1.0, 5.0])
    score = lambda s: 1.0 if float(s["w"][0]) <= 1.0 else 0.0  # noqa: E731 - the two 1.0s tie, so does their soup
    _, chosen = soups.greedy_soup(ingredients, score=score)
    assert chosen == [1]  # the later of the tied pair first, and a tie is not an improvement (gt)
    _, chosen = soups.greedy_soup(ingredients, score=score, accept="ge")
    assert chosen == [1, 0]


def test_greedy_soup_with_batch_scores_rejects_early_and_decides_the_same():
    labels = torch.arange(12) % 3

    def batches(state):  # a "model" whose weight decides how many held-out examples it gets right
        right = int(round(12 - 2 * abs(float(state["w"][0]) - 2.0)))
        hits = torch.arange(12) < right
        for start in range(0, 12, 4):
            yield int(hits[start : start + 4].sum()), 4

    values = [2.0, 6.0, 1.0, 3.5]  # own: 12, 4, 10, 9 right; each candidate is out of reach after one batch
    seen = []

    def counted(state):
        for correct, size in batches(state):
            seen.append(size)
            yield correct, size

    _, by_batches = soups.greedy_soup(states(values), score=counted)
    _, by_accuracy = soups.greedy_soup(states(values), score=lambda s: sum(c for c, _ in batches(s)) / len(labels))
    assert by_batches == by_accuracy == [0]
    assert sum(seen) == 4 * 12 + 3 * 4  # full own scores, then one batch per rejected candidate (84 without)


def test_wise_ft_model_stock_and_ensemble_by_hand():
    zero, tuned = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([2.0, 0.0])}
    assert soups.wise_ft(zero, tuned, 0.5)["w"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="alpha"):
        soups.wise_ft(zero, tuned, 1.5)
    init = {"w": torch.tensor([0.0, 0.0])}
    # task vectors (1, 0) and (0, 1): cos = 0, so t = 0 and Model Stock returns the init
    assert soups.model_stock(init, [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}])["w"].tolist() == [0.0, 0.0]
    # equal task vectors: cos = 1, t = 1, the average
    assert soups.model_stock(init, [{"w": torch.tensor([1.0, 2.0])}] * 2)["w"].tolist() == [1.0, 2.0]
    # θ0 among the ingredients is dropped: counted, its zero task vector would make cos = 0, t = 0 and the result θ0
    assert soups.model_stock(init, [init, {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 2.0])}])["w"].tolist() == [1.0, 2.0]
    with pytest.raises(UserError, match="besides θ0"):
        soups.model_stock(init, [init, {"w": torch.tensor([1.0, 2.0])}])
    assert soups.ensemble([torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])]).tolist() == [[1.0, 1.0]]


def test_learned_soup_finds_the_ingredient_that_fits():
    """Two linear 'models'; only the first classifies the held-out data: α moves towards it."""
    model = torch.nn.Linear(2, 2, bias=False)
    good, bad = {"weight": torch.tensor([[4.0, 0.0], [0.0, 4.0]])}, {"weight": torch.tensor([[0.0, 4.0], [4.0, 0.0]])}
    x = torch.eye(2).repeat(8, 1)
    y = torch.tensor([0, 1]).repeat(8)
    soup, weights = soups.learned_soup([good, bad], model, lambda epoch: [(x, y)], epochs=20, lr=0.1)
    assert weights[0] > 0.8 and (soup["weight"].argmax(1) == torch.tensor([0, 1])).all()


def test_the_library_imports_no_hydra():
    import subprocess
    import sys

    code = "import sys, soups; soups.greedy_soup; assert not any(m.startswith('hydra') for m in sys.modules), 'hydra imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-2000:]


W, B = torch.tensor([1.0, 2.0]), torch.tensor([4.0])
# name: (call, the one-line error it must raise): each a mismatch the library used to average silently
# (a key missing from one ingredient divided by N, broadcast shapes) or fail on with a raw KeyError.
MISMATCHES = {
    "uniform_missing_key": (
        lambda: soups.uniform_soup([{"w": W, "b": B}, {"w": W}]),
        "ingredient 1: lacks key 'b' compared with ingredient 0; ingredients must share one key set",
    ),
    "uniform_extra_key": (lambda: soups.uniform_soup([{"w": W}, {"w": W, "b": B}]), "ingredient 1: has an extra key 'b'"),
    "uniform_shape": (
        lambda: soups.uniform_soup([{"w": torch.ones(1, 2)}, {"w": torch.ones(1)}]),
        "ingredient 1: key 'w' has shape [1], ingredient 0 has [1, 2]",
    ),
    "uniform_dtype": (
        lambda: soups.uniform_soup([{"w": W}, {"w": W.half()}]),
        "ingredient 1: key 'w' has dtype torch.float16, ingredient 0 has torch.float32",
    ),
    "wise_ft_shape": (
        lambda: soups.wise_ft({"w": torch.ones(1, 2)}, {"w": torch.ones(1)}, 0.5),
        "fine-tuned: key 'w' has shape [1], zero-shot has [1, 2]",
    ),
    "wise_ft_missing_key": (lambda: soups.wise_ft({"w": W, "b": B}, {"w": W}, 0.5), "fine-tuned: lacks key 'b' compared with zero-shot"),
    "greedy_missing_key": (
        lambda: soups.greedy_soup([{"w": W, "b": B}, {"w": W}], score=lambda s: float(s["w"][0])),
        "ingredient 1: lacks key 'b' compared with ingredient 0",
    ),
    "model_stock_shape": (
        lambda: soups.model_stock({"w": W}, [{"w": W}, {"w": torch.ones(3)}]),
        "ingredient 1: key 'w' has shape [3], init has [2]",
    ),
    "learned_missing_key": (
        lambda: soups.learned_soup([{"weight": W}, {}], torch.nn.Linear(2, 1, bias=False), lambda epoch: [], epochs=1),
        "ingredient 1: lacks key 'weight' compared with ingredient 0",
    ),
    "partial_module_prefix": (
        lambda: soups.uniform_soup([{"w": W, "b": B}, {"module.w": W, "b": B}]),
        "ingredient 1: lacks key 'w' compared with ingredient 0",
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_the_library_refuses_mismatched_ingredients_in_one_line_naming_the_key(case):
    call, message = MISMATCHES[case]
    with pytest.raises(UserError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_module_prefix_on_a_whole_state_dict_is_stripped_and_files_name_their_path(tmp_path):
    """DataParallel's `module.` on every key is a wrapper's name, not another model: stripped, then averaged."""
    soup = soups.uniform_soup([{"w": W, "b": B}, {"module.w": 3 * W, "module.b": 3 * B}])
    assert soup.keys() == {"w", "b"} and soup["w"].tolist() == [2.0, 4.0] and soup["b"].tolist() == [8.0]
    meta = CheckpointMeta("TinyCLIP", None, 1, "toy", "individual")
    paths = [
        save_checkpoint(tmp_path / "a.safetensors", {"w": W, "b": B}, meta),
        save_checkpoint(tmp_path / "b.safetensors", {"w": W}, meta),
    ]
    with pytest.raises(UserError, match=rf"^{tmp_path / 'b.safetensors'}: lacks key 'b' compared with {tmp_path / 'a.safetensors'}"):
        soups.uniform_soup(paths)
