"""Greedy soup cost: held-out forward passes (images × candidate evaluations) against the official loop.

    python -m benchmarks.greedy_cost                      # replay: demo outcomes + synthetic cases (seconds)
    python -m benchmarks.greedy_cost --capture ROOT       # first record the demo's outcomes from ROOT/runs/demo

The number of forward passes depends only on which held-out examples each candidate soup gets right, so
the benchmark replays `soups.greedy.greedy_select` on recorded per-example outcomes:

- **demo**: every candidate soup of the official greedy loop (full evaluation, `accept=gt`) on the demo's
  12 fine-tuned ingredients, sorted and random order, recorded by `--capture` (real forward passes through
  the soups stage's scorer) into benchmarks/results/greedy_demo_outcomes.json as the wrong example indices;
- **synthetic**: a latent-margin model (example difficulty + per-ingredient skill and noise; a soup averages
  the members' noise), individual accuracy 80–99%, 12 and 72 ingredients, 5000 held-out examples and 200
  (one eval batch).

Loops compared on the same outcomes: `official` (every candidate scored on every example), `batches` (exact
early rejection on eval batches of 256 in set order), `ordered` (hardest examples first,
growing chunks from 32: what the soups stage runs), `ordered+own` (also knowing each ingredient's own
per-example outcomes and the first soup's, as the greedy ensemble does). Each must choose exactly the
official loop's ingredients, with the same held-out counts wherever a candidate was scored in full; the
benchmark fails otherwise. Writes benchmarks/results/greedy_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from soups import average
from soups.greedy import GreedyStep, greedy_select

ROOT = Path(__file__).resolve().parent.parent
OUTCOMES = ROOT / "benchmarks" / "results" / "greedy_demo_outcomes.json"
RESULT = ROOT / "benchmarks" / "results" / "greedy_cost.json"
BATCH = 256
LOOPS = ("official", "batches", "ordered", "ordered+own")

SoupOutcomes = Callable[[frozenset[int]], torch.Tensor]  # members -> per-example outcomes (1 right, 0 wrong)


def replay(loop: str, outcomes_of: SoupOutcomes, order: list[int], n: int, accept: str = "gt") -> list[GreedyStep]:
    """The greedy loop `loop` over `order`, every held-out score read from `outcomes_of`."""
    soup: set[int] = set()

    def score(index: int, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor | tuple[float, int]]:
        outcomes = outcomes_of(frozenset(soup | {index}))
        if loop in ("official", "batches"):  # counts in set order, one eval batch at a time
            for start in range(0, n, BATCH):
                yield float(outcomes[start : start + BATCH].sum()), len(outcomes[start : start + BATCH])
        else:
            for chunk in chunks:
                yield outcomes[chunk]

    first = outcomes_of(frozenset({order[0]}))
    own = {i: outcomes_of(frozenset({i})) for i in order} if loop == "ordered+own" else None
    first_score = first if loop == "ordered+own" else float(first.sum())
    return greedy_select(order, first_score, n, score, soup.add, accept, loop != "official", chunk=BATCH, own_outcomes=own)


def compare(outcomes_of: SoupOutcomes, order: list[int], n: int, accept: str = "gt") -> dict[str, object]:
    """Forward passes of each loop relative to the official one; raises if any selection differs."""
    runs = {loop: replay(loop, outcomes_of, order, n, accept) for loop in LOOPS}
    official = runs["official"]
    chosen = [s.index for s in official if s.accepted]
    for loop, steps in runs.items():
        if [s.index for s in steps if s.accepted] != chosen or [s.soup_correct for s in steps] != [s.soup_correct for s in official]:
            raise AssertionError(f"{loop}: the selection differs from the official loop's")
        for step, full in zip(steps, official):
            if step.correct is not None and step.correct != full.correct:
                raise AssertionError(f"{loop}: candidate {step.index} scored {step.correct}, the official loop {full.correct}")
    full = sum(s.evaluated for s in official[1:])
    row: dict[str, object] = {"n": n, "candidates": len(order) - 1, "accepted": len(chosen) - 1, "chosen": chosen}
    row["lower_bound"] = round((len(chosen) - 1) * n / full, 4)  # accepted candidates are always scored in full
    for loop in LOOPS[1:]:
        row[loop] = round(sum(s.evaluated for s in runs[loop][1:]) / full, 4)
    row["stopped_early_same_as_batches"] = [s.correct is None for s in runs["batches"]] == [s.correct is None for s in runs["ordered"]]
    return row


def demo_rows(path: Path = OUTCOMES) -> dict[str, dict[str, object]]:
    recorded = json.loads(path.read_text())
    n, names = recorded["n"], recorded["ingredients"]
    rows = {}
    for kind, run in recorded["orders"].items():
        table: dict[frozenset[int], list[int]] = {frozenset({run["order"][0]}): run["first_wrong"]}
        for cand in run["candidates"]:
            table[frozenset(cand["members"]) | {cand["candidate"]}] = cand["wrong"]
        individual = {frozenset({i}): recorded["individual_wrong"][name] for i, name in enumerate(names)}

        def outcomes_of(members: frozenset[int], table=table, individual=individual) -> torch.Tensor:
            outcomes = torch.ones(n)
            outcomes[(table.get(members) if members in table else individual[members])] = 0
            return outcomes

        rows[kind] = compare(outcomes_of, run["order"], n)
        if rows[kind]["chosen"] != run["chosen"]:
            raise AssertionError(f"demo {kind}: replayed selection {rows[kind]['chosen']} is not the recorded {run['chosen']}")
    return rows


def latent_outcomes(seed: int, n: int, count: int, accuracy: float) -> tuple[SoupOutcomes, list[int]]:
    """A soup of members S gets example j right iff μ + d_j + mean_S(s_i + e_ij) > 0 (d, e ~ N(0, 1),
    skill s_i ~ N(0, 0.5)); μ puts a single ingredient's accuracy near `accuracy`. Returns the outcomes
    and the official order (best single ingredient first)."""
    g = torch.Generator().manual_seed(seed)
    difficulty, noise = torch.randn(n, generator=g), torch.randn(count, n, generator=g)
    skill = torch.randn(count, generator=g) * 0.5
    mu = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(accuracy))) * 2**0.5

    def outcomes_of(members: frozenset[int]) -> torch.Tensor:
        index = torch.tensor(sorted(members))
        return ((mu + difficulty + skill[index].mean() + noise[index].mean(0)) > 0).float()

    own = [float(outcomes_of(frozenset({i})).sum()) for i in range(count)]
    order = sorted(range(count), key=lambda i: (own[i], i), reverse=True)
    return outcomes_of, order


def synthetic_rows(seeds: int = 5) -> list[dict[str, object]]:
    rows = []
    for n in (5000, 200):
        for count in (12, 72):
            for accuracy in (0.80, 0.90, 0.95, 0.99):
                cases = [compare(*latent_outcomes(seed, n, count, accuracy), n) for seed in range(seeds)]
                summary: dict[str, object] = {"n": n, "ingredients": count, "accuracy": accuracy, "seeds": seeds}
                for key in ("lower_bound", *LOOPS[1:]):
                    summary[key] = round(statistics.mean(float(c[key]) for c in cases), 4)  # type: ignore[arg-type]
                summary["accepted"] = [c["accepted"] for c in cases]
                rows.append(summary)
    return rows


def capture(root: Path, path: Path = OUTCOMES) -> None:
    """Record the per-example held-out outcomes of every candidate soup of the official loop on the demo's
    ingredients (ROOT/runs/demo/finetune, data under ROOT), through the soups stage's own scorer."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    import models.cli  # noqa: F401  (registers the project_root resolver)
    from soups.stage import build_context

    overrides = ["experiment=demo", "soup=greedy", f"ingredients={root}/runs/demo/finetune", f"paths.root={root}", "soup.evaluate=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("soups", overrides=[*overrides, "run_name=greedy_cost"])
    ctx = build_context(cfg)
    scorer, n = ctx.scorer, ctx.scorer.n_heldout
    everything = [torch.arange(n)]

    def wrong(state) -> list[int]:
        (outcomes,) = scorer.heldout_outcomes(state, everything)
        return (outcomes < 1).nonzero().flatten().tolist()

    individual = ctx.heldout_correct()
    names = [ing.path.parent.name for ing in ctx.ingredients]
    recorded: dict[str, object] = {"n": n, "ingredients": names, "individual_correct": individual, "orders": {}}
    for kind in ("sorted", "random"):
        ctx.options.order = kind
        order = ctx.order(individual)
        chosen, candidates = _official_loop(ctx, order, individual[order[0]], n, wrong)
        recorded["orders"][kind] = {"order": order, "chosen": chosen, "candidates": candidates, "first_wrong": wrong(ctx.load(order[0]))}  # type: ignore[index]
    # each ingredient's own outcomes, from the eval stage's saved held-out logits (float16: a prior only)
    logits_dir = root / "runs" / "demo" / "eval" / "individuals" / "logits"
    recorded["individual_wrong"] = {}
    for name in names:
        saved = load_file(logits_dir / name / "heldout.safetensors")
        recorded["individual_wrong"][name] = (saved["logits"].float().argmax(-1) != saved["labels"]).nonzero().flatten().tolist()  # type: ignore[index]
    path.write_text(json.dumps(recorded) + "\n")


def _official_loop(ctx, order: list[int], first_correct: int, n: int, wrong: Callable) -> tuple[list[int], list[dict[str, object]]]:
    """The official loop (full evaluation, `gt`) on real soups: the chosen indices and each candidate's wrong examples."""
    running, members, candidates = average.RunningSum(torch.float32), [], []

    def score(index: int, chunks: list[torch.Tensor]) -> Iterator[tuple[float, int]]:
        wrong_now = wrong(running.mean_with(ctx.load(index)))
        candidates.append({"members": list(members), "candidate": index, "wrong": wrong_now})
        yield float(n - len(wrong_now)), n

    def commit(index: int) -> None:
        running.add(ctx.load(index), owned=True)
        members.append(index)

    steps = greedy_select(order, first_correct, n, score, commit, "gt", early_rejection=False)
    return [s.index for s in steps if s.accepted], candidates


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.greedy_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, metavar="ROOT", help="record the demo's outcomes from ROOT/runs/demo first")
    args = parser.parse_args()
    if args.capture is not None:
        capture(args.capture.resolve())
    result = {"demo": demo_rows(), "synthetic": synthetic_rows()}
    for kind, row in result["demo"].items():
        print(f"demo {kind}: " + ", ".join(f"{key} {row[key]}" for key in ("accepted", "lower_bound", *LOOPS[1:])))
    for row in result["synthetic"]:
        print("synthetic " + ", ".join(f"{key} {row[key]}" for key in ("n", "ingredients", "accuracy", "lower_bound", *LOOPS[1:])))
    RESULT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
