"""`python -m plots.seeds FINDINGS.json... --out DIR`: mean +- sd of each finding over sweep seeds.

Each input is the findings.json of one sweep seed (`python -m pipeline demo --seeds 0 1 2` makes them
and calls this). Writes `DIR/findings_seeds.json` and `DIR/findings_seeds.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.atomic import write_text_atomic


def summarise(per_seed: Sequence[Sequence[dict]]) -> list[dict]:
    """Per finding (in the first seed's order): its delta per seed, their mean and sample sd (pp), and in
    how many seeds it held. A finding missing from a seed counts only where it is present."""
    names = list(dict.fromkeys(f["name"] for findings in per_seed for f in findings))
    summary = []
    for name in names:
        found = [f for findings in per_seed for f in findings if f["name"] == name]
        deltas = np.array([f["delta_pp"] for f in found], dtype=float)
        summary.append(
            {
                "name": name,
                "metric": found[0]["metric"],
                "claim": found[0].get("claim"),
                "seeds": len(found),
                "delta_pp": deltas.tolist(),
                "mean_pp": round(float(deltas.mean()), 3),
                "sd_pp": round(float(deltas.std(ddof=1)), 3) if len(deltas) > 1 else None,
                "held": sum(bool(f["holds"]) for f in found),
            }
        )
    return summary


def to_markdown(summary: Sequence[dict]) -> str:
    lines = ["| finding | metric | mean (pp) | sd (pp) | held in | per seed (pp) |", "|---|---|---:|---:|---:|---|"]
    for s in summary:
        sd = "" if s["sd_pp"] is None else f"{s['sd_pp']:.2f}"
        per_seed = ", ".join(f"{d:+.2f}" for d in s["delta_pp"])
        lines.append(f"| {s['name']} | {s['metric']} | {s['mean_pp']:+.2f} | {sd} | {s['held']}/{s['seeds']} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("findings", nargs="+", help="findings.json of each seed")
    parser.add_argument("--out", required=True, help="folder for findings_seeds.{json,md}")
    args = parser.parse_args(argv)
    per_seed = []
    for path in map(Path, args.findings):
        if not path.exists():
            print(f"error: {path}: no such findings file; run `python -m plots` on that seed's runs first", file=sys.stderr)
            return 2
        try:
            per_seed.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            print(f"error: {path}: not JSON ({err.msg}, line {err.lineno}); regenerate it with `python -m plots`", file=sys.stderr)
            return 2
    summary = summarise(per_seed)
    out = Path(args.out)
    write_text_atomic(out / "findings_seeds.json", json.dumps({"inputs": args.findings, "findings": summary}, indent=1) + "\n")
    write_text_atomic(out / "findings_seeds.md", to_markdown(summary))
    print(f"wrote {out}/findings_seeds.{{json,md}} ({len(per_seed)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
