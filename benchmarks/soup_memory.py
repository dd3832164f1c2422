"""Memory and time of a uniform soup of 8 ViT-B/32-size checkpoints, streamed against load-everything.

    python -m benchmarks.soup_memory [--models 8] [--arch ViT-B-32]

Writes N random-weight classifier checkpoints of the architecture (about 350 MB each for ViT-B/32; no
download) to a temporary folder, then runs each of these in a fresh child process, measuring its peak
RSS (VmHWM) and wall time:
- `read`: read the N files once, in 16 MB blocks (the I/O floor);
- `write`: write one checkpoint of that size with `models.checkpoint.save_checkpoint` (the output's floor);
- `soup`: the soups stage's uniform soup (`soups.stage.run_soup`, evaluation off): checks, streaming
  running sum, hashes for the metadata, checkpoint written;
- `naive`: load every checkpoint (safetensors `load_file`), stack and average, save.
Prints peak RSS / one checkpoint's size (goal ≤ 2.5) and soup wall / read wall (goal ≤ 1.5).
Each is run with the inputs in the page cache (warm) and evicted from it (cold, `posix_fadvise`).
The temporary folder is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark. VmHWM, not getrusage: ru_maxrss survives exec, so a child
    would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(mode: str, folder: Path) -> dict:
    """Runs in a fresh process: import and prepare, then time `mode`; report wall, peak RSS and RSS before it."""
    import torch

    torch.set_num_threads(1)
    paths = sorted(folder.glob("in/*/model.safetensors"))
    if mode == "read":

        def work():
            block = bytearray(16 << 20)
            for path in paths:
                with open(path, "rb", buffering=0) as handle:
                    while handle.readinto(block):
                        pass

    elif mode == "soup":
        from hydra import compose, initialize_config_dir

        import models.cli
        from soups.stage import run_soup

        with initialize_config_dir(config_dir=str(models.cli.CONF_DIR), version_base="1.3"):
            cfg = compose("soups", overrides=["soup=uniform", f"ingredients={folder}/in", "soup.evaluate=false", "device=cpu"])

        def work():
            run_soup(cfg, folder / "soup")

    elif mode == "write":  # the floor for writing the soup's one output checkpoint
        from models.checkpoint import load_checkpoint, save_checkpoint

        state, meta = load_checkpoint(paths[0])

        def work():
            save_checkpoint(folder / "write.safetensors", state, meta)

    elif mode == "naive":
        from safetensors.torch import load_file, save_file

        def work():
            states = [load_file(str(p)) for p in paths]
            soup = {k: torch.stack([s[k] for s in states]).mean(dim=0) for k in states[0]}
            save_file(soup, str(folder / "naive.safetensors"))

    else:
        raise ValueError(mode)
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    work()
    return {"mode": mode, "wall_s": time.perf_counter() - start, "peak_rss": peak_rss_bytes(), "rss_after_imports": baseline}


def write_checkpoints(folder: Path, count: int, arch: str) -> int:
    import torch

    from models.checkpoint import CheckpointMeta, save_checkpoint
    from models.classifier import ImageClassifier, embed_dim_of
    from models.cli import DONE_FILE
    from models.factory import create_clip

    torch.manual_seed(0)
    clip_model, _, _ = create_clip(arch, None)
    base = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), 1000).state_dict()
    del clip_model
    meta = CheckpointMeta(arch=arch, pretrained=None, num_classes=1000, classes="imagenet1k", kind="individual")
    for i in range(count):
        state = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
        save_checkpoint(folder / "in" / f"model_{i}" / "model.safetensors", state, meta)
        (folder / "in" / f"model_{i}" / DONE_FILE).write_text("")
    return (folder / "in" / "model_0" / "model.safetensors").stat().st_size


def evict(folder: Path) -> None:
    """Drop the input checkpoints from the page cache (no root needed), so the next reads hit the disk."""
    for path in sorted(folder.glob("in/*/model.safetensors")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(mode: str, folder: Path, cold: bool) -> dict:
    if cold:
        evict(folder)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.soup_memory", "--child", mode, str(folder)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict], size: int, title: str) -> None:
    read_wall, write_wall, soup = results["read"]["wall_s"], results["write"]["wall_s"], results["soup"]
    print(f"\n{title}")
    print(f"{'mode':<6} {'wall s':>7} {'x read':>7} {'peak RSS MB':>12} {'x ckpt':>7} {'(peak - imports) x ckpt':>24}")
    for mode, r in results.items():
        extra = (r["peak_rss"] - r["rss_after_imports"]) / size
        print(
            f"{mode:<6} {r['wall_s']:7.2f} {r['wall_s'] / read_wall:7.2f} {r['peak_rss'] / 1e6:12.0f} {r['peak_rss'] / size:7.2f} {extra:24.2f}"
        )
    own = (soup["peak_rss"] - soup["rss_after_imports"]) / size
    print(f"soup: peak RSS / checkpoint = {soup['peak_rss'] / size:.2f} (goal <= 2.5; the soup's own part {own:.2f})")
    print(
        f"soup: wall / read = {soup['wall_s'] / read_wall:.2f} (goal <= 1.5); less writing the output ({write_wall:.2f} s): {(soup['wall_s'] - write_wall) / read_wall:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; the fastest wall time counts")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    folder = Path(tempfile.mkdtemp(prefix="soup_memory_"))
    try:
        size = write_checkpoints(folder, args.models, args.arch)
        print(f"{args.models} x {args.arch} checkpoints, {size / 1e6:.0f} MB each, in {folder}")
        for cold, title in (
            (False, "inputs in the page cache (warm)"),
            (True, "inputs evicted from the page cache before each run (cold)"),
        ):
            results: dict[str, dict] = {}
            for _ in range(args.repeats):
                for mode in ("read", "write", "soup", "naive"):
                    result = run_child(mode, folder, cold)
                    if mode not in results or result["wall_s"] < results[mode]["wall_s"]:
                        results[mode] = result
            report(results, size, title)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
