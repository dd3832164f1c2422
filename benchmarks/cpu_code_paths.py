"""Do the numbers depend on the CPU's instruction set? A short fine-tune under pinned and unpinned kernels.

    python -m benchmarks.cpu_code_paths [--epochs 2]

Runs the same `python -m finetune` (small embedded world, the pretrained tiny CLIP, 1 thread, mixup and
label smoothing on) in a fresh process per setting, with the environment variables that choose the
kernels: `MKL_CBWR` (MKL's conditional numerical reproducibility: the code path of its matrix products),
`ATEN_CPU_CAPABILITY` (PyTorch's own vectorised kernels) and `ONEDNN_MAX_CPU_ISA` (oneDNN's convolutions).
Capping them at AVX2 on an AVX-512 machine runs the code an AVX2-only CPU (an AMD EPYC of the Zen 2/3
kind) would run. Reports per setting: the checkpoint's sha256, the largest weight difference and the
held-out accuracy against the unpinned run, and the training seconds relative to it.
Writes benchmarks/results/cpu_code_paths.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SETTINGS: dict[str, dict[str, str]] = {
    "unpinned": {},
    "unpinned (again)": {},
    "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "all AVX2 (an AVX2-only CPU)": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "all AVX2 (again)": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "all COMPATIBLE / default / SSE4.1": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
PINNING = ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def finetune(runs: Path, cache: Path, name: str, settings: dict[str, str], epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PINNING}
    env.update({"MODEL_SOUPS_RUNS": str(runs), "MODEL_SOUPS_CACHE": str(cache), "OMP_NUM_THREADS": "1", **settings})
    args = ["data.scale=small", "finetune.batch_size=100", f"finetune.epochs={epochs}", "finetune.warmup_steps=3"]
    args += ["finetune.lr=1e-3", "finetune.mixup=0.4", "finetune.label_smoothing=0.1", "finetune.threads=1", "finetune.progress=false"]
    result = subprocess.run([sys.executable, "-m", "finetune", f"name={name}", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    run = runs / name / "finetune" / "finetune"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    record = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    return {
        "sha256": hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest(),
        "train_seconds": sum(m["seconds"] for m in metrics),
        "final_loss": metrics[-1]["loss"],
        "heldout_correct": round(record["top1"] * record["n"]),
        "heldout_n": record["n"],
        "weights": run / "model.safetensors",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        rows = {}
        for index, (label, settings) in enumerate(SETTINGS.items()):
            rows[label] = finetune(runs, cache, f"s{index}", settings, args.epochs)
        base = rows["unpinned"]
        reference = load_file(str(base["weights"]))
        table = []
        for label, row in rows.items():
            weights = load_file(str(row["weights"]))
            max_diff = max(float((weights[k].double() - reference[k].double()).abs().max()) for k in reference if k in weights)
            table.append(
                {
                    "setting": label,
                    "env": SETTINGS[label],
                    "sha256": row["sha256"][:16],
                    "same_bytes_as_unpinned": row["sha256"] == base["sha256"],
                    "max_weight_diff": max_diff,
                    "final_loss": row["final_loss"],
                    "heldout_correct": f"{row['heldout_correct']}/{row['heldout_n']}",
                    "time_vs_unpinned": row["train_seconds"] / base["train_seconds"],
                }
            )
            print(
                f"{label:36s} {row['sha256'][:12]} same={row['sha256'] == base['sha256']!s:5s} max|dw|={max_diff:.2e} "
                f"loss={row['final_loss']:.6f} heldout={row['heldout_correct']}/{row['heldout_n']} time x{table[-1]['time_vs_unpinned']:.2f}"
            )
    out = ROOT / "benchmarks" / "results" / "cpu_code_paths.json"
    info = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "epochs": args.epochs}
    out.write_text(json.dumps({"machine": info, "rows": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
