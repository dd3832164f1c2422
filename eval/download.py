"""Fetch the official model-soups checkpoints: `python -m eval.convert download-official`.

The 72 released models (`model_0.pt` is the LP init, `model_1.pt` … `model_71.pt` the fine-tunes) are
assets of release v0.0.2 of github.com/mlfoundations/model-soups; the official `main.py --download-models`
fetches them from `OFFICIAL_BASE_URL/model_{i}.pt`, about 350 MB each.

Each file goes to `<name>.part` first (an interrupted download resumes there with an HTTP Range request),
is checked (`torch.load(weights_only=True)` and the official key layout), hashed, renamed to its final
name, and recorded in `<out>/manifest.json` (its sha256 and size). So a file under its final name is
always complete and checked. A rerun skips files whose manifest entry matches their size; `verify=True`
rehashes every file against the manifest and downloads again any that differ.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from models.atomic import write_text_atomic
from models.checkpoint import load_pt_weights_only, sha256_prefix
from models.errors import UserError

OFFICIAL_BASE_URL = "https://github.com/mlfoundations/model-soups/releases/download/v0.0.2"
OFFICIAL_COUNT = 72
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "model-soups-download/1"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # a stalled connection counts as dropped after this long without data
BACKOFF_S = 2.0  # wait before the first retry; doubles with each further one
MAX_BACKOFF_S = 60.0
T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying: a dropped connection, a busy server, a truncated response."""


class HTTPStatusError(UserError):
    """The server answered with an error status that retrying will not change (404, 403, 416, ...)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# --- names ---------------------------------------------------------------------------------------


def parse_models(text: str, count: int = OFFICIAL_COUNT) -> list[int]:
    """`'0-71'`, `'0,5,10-12'` or `'7'` -> the sorted model indices, each in [0, count)."""
    indices: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UserError(f"--models: {part.strip()!r} is not an index or a range like 0-71")
        first, last = int(match[1]), int(match[2] or match[1])
        if first > last or last >= count:
            raise UserError(f"--models: {part.strip()} is outside 0-{count - 1} (the official release has {count} models)")
        indices.update(range(first, last + 1))
    return sorted(indices)


def file_name(index: int) -> str:
    return f"model_{index}.pt"


def model_url(base_url: str, index: int) -> str:
    return f"{base_url.rstrip('/')}/{file_name(index)}"


def part_path(path: Path) -> Path:
    """Where `path` is downloaded to until it is complete and checked."""
    return path.with_name(path.name + ".part")


# --- what a finished file must be ----------------------------------------------------------------


def official_layout_problem(state: Any) -> str | None:
    """Why `state` is not an official checkpoint, or None if it is.

    Official `model_{i}.pt`: the state dict of model-soups' `ModelWrapper`, i.e. CLIP under `model.`
    with its text `transformer.*` deleted, plus `classification_head.weight/bias` (tensors only).
    """
    if not isinstance(state, dict) or not state:
        return "not a non-empty state dict"
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"'{not_tensors[0]}' is not a tensor"
    unexpected = [k for k in state if not str(k).startswith(("model.", "classification_head."))]
    if unexpected:
        return f"unexpected key '{unexpected[0]}'"
    missing = [k for k in ("classification_head.weight", "classification_head.bias") if k not in state]
    if missing:
        return f"no '{missing[0]}'"
    if not any(k.startswith("model.visual.") for k in state):
        return "no image-tower 'model.visual.*' keys"
    text_keys = [k for k in state if k.startswith("model.transformer.")]
    if text_keys:
        return f"holds text-tower keys ('{text_keys[0]}'); official files have them removed"
    return None


def check_official_file(path: Path) -> None:
    """Load `path` weights-only (code-carrying pickles are refused) and check the official key layout."""
    problem = official_layout_problem(load_pt_weights_only(path))
    if problem:
        raise UserError(f"{path}: not an official model-soups checkpoint ({problem})")


def sha256_of(path: Path) -> str:
    return sha256_prefix(path, length=64)


# --- manifest ------------------------------------------------------------------------------------


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """`{file name: {"url", "bytes", "sha256"}}` from `<out>/manifest.json` (empty if there is none)."""
    path = out / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not all({"bytes", "sha256"} <= entry.keys() for entry in files.values()):
            raise ValueError(f"format is not {MANIFEST_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: not a manifest written by download-official ({err}); move it away to check every file again") from None
    return files


def write_manifest(out: Path, files: dict[str, dict[str, Any]]) -> None:
    def model_index(name: str) -> tuple[int, str]:
        digits = re.findall(r"\d+", name)
        return (int(digits[0]) if digits else -1, name)

    ordered = {name: files[name] for name in sorted(files, key=model_index)}
    write_text_atomic(out / MANIFEST_FILE, json.dumps({"format": MANIFEST_FORMAT, "files": ordered}, indent=1) + "\n")


def manifest_entry(path: Path, url: str) -> dict[str, Any]:
    return {"url": url, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def settle_existing(path: Path, entry: dict[str, Any] | None, url: str, verify: bool) -> dict[str, Any] | None:
    """The manifest entry of a file already under its final name, or None if it must be downloaded (again).

    A file with a matching entry is kept (with `verify`, only if its sha256 matches too). A file with no
    entry (fetched by other means) is checked like a download and adopted. Anything else is removed.
    """
    if not path.exists():
        return None
    if entry is not None:
        size_matches = path.stat().st_size == entry["bytes"]
        if size_matches and (not verify or sha256_of(path) == entry["sha256"]):
            return entry
        tqdm.write(f"{path}: {'size' if not size_matches else 'sha256'} differs from {MANIFEST_FILE}; downloading it again")
    else:
        try:
            check_official_file(path)
            return manifest_entry(path, url)
        except UserError as err:
            tqdm.write(f"{err}; downloading it again")
    path.unlink()
    return None


# --- HTTP ----------------------------------------------------------------------------------------


def open_url(url: str, method: str = "GET", offset: int = 0) -> http.client.HTTPResponse:
    """Open `url` (from byte `offset` on); a retryable failure is `Transient`, any other a `UserError`."""
    headers = {"User-Agent": "model-soups-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code in (408, 429) or err.code >= 500:
            raise Transient(f"HTTP {err.code} {err.reason}") from None
        hint = "; check --base-url and --models" if err.code == 404 else ""
        raise HTTPStatusError(f"{url}: HTTP {err.code} {err.reason}{hint}", err.code) from None
    except urllib.error.URLError as err:
        raise Transient(f"cannot connect ({err.reason}); check the network (compute nodes often have none: use a login node)") from None
    except (OSError, http.client.HTTPException) as err:
        raise Transient(f"connection failed ({type(err).__name__}: {err})") from None


def with_retries(action: Callable[[], T], url: str, retries: int, stop: threading.Event) -> T:
    """Run `action`, retrying a `Transient` failure up to `retries` times with exponential backoff."""
    attempt = 0
    while True:
        try:
            return action()
        except Transient as err:
            if attempt == retries:
                raise UserError(f"{url}: {err}; gave up after {retries} retries (rerun to resume)") from None
            if stop.wait(min(BACKOFF_S * 2**attempt, MAX_BACKOFF_S)):
                raise UserError(f"{url}: stopped") from None  # another download failed or Ctrl-C; that error is reported
            attempt += 1


def remote_size(url: str) -> int | None:
    """The file's size from a HEAD request (None if the server does not say or refuses HEAD)."""
    try:
        response = open_url(url, method="HEAD")
    except HTTPStatusError as err:
        if err.code in (404, 410):
            raise
        return None  # e.g. a storage URL signed for GET only; the GET will tell
    with response:
        length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch_once(url: str, part: Path, progress: Callable[[int], None], stop: threading.Event) -> None:
    """Append the rest of `url` to `part`, asking for it with a Range request if `part` holds a prefix.

    Returns when the response ends (or `stop` is set); a short response is `Transient`.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = open_url(url, offset=offset)
    except HTTPStatusError as err:
        if offset and err.code == 416:  # what we hold is not a prefix of this file: start from scratch
            part.unlink()
            progress(-offset)
            raise Transient("the server cannot resume this file; starting it again") from None
        raise
    with response:
        if offset and response.status != 206:  # the server ignored the Range header: it sends the whole file
            progress(-offset)
            offset = 0
        elif offset and not str(response.headers.get("Content-Range", "")).startswith(f"bytes {offset}-"):
            part.unlink()
            progress(-offset)
            raise Transient(f"the server resumed at the wrong offset ({response.headers.get('Content-Range')}); starting it again")
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        received = offset
        try:
            handle = open(part, "ab" if offset else "wb")
        except OSError as err:
            raise write_error(part, err) from None
        with handle:
            while not stop.is_set():
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as err:
                    raise Transient(f"connection dropped after {received} bytes ({type(err).__name__})") from None
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                    handle.flush()
                except OSError as err:
                    raise write_error(part, err) from None
                received += len(chunk)
                progress(len(chunk))
    if not stop.is_set() and expected is not None and received != expected:
        raise Transient(f"truncated response: {received} of {expected} bytes")


def write_error(part: Path, err: OSError) -> UserError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{part}: no space left on the device ({err.strerror}); free some or choose another --out, then rerun to resume")
    return UserError(f"{part}: cannot write ({err.strerror})")


# --- the command ---------------------------------------------------------------------------------


def run_parallel(action: Callable[[T], Any], items: Iterable[T], jobs: int, stop: threading.Event) -> list[Any]:
    """`action(item)` for every item on `jobs` threads; on the first error (or Ctrl-C) set `stop` and re-raise."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(action, item): n for n, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return results


def download_official(
    out: Path,
    indices: Sequence[int],
    base_url: str = OFFICIAL_BASE_URL,
    verify: bool = False,
    jobs: int = 4,
    retries: int = 5,
) -> list[Path]:
    """Make `<out>/model_{i}.pt` complete and checked for every index; returns their paths in order."""
    if jobs < 1 or retries < 0:
        raise UserError(f"--jobs must be at least 1 and --retries at least 0 (got {jobs} and {retries})")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    paths = {i: out / file_name(i) for i in indices}
    urls = {i: model_url(base_url, i) for i in indices}
    todo = []
    for i in indices:
        entry = settle_existing(paths[i], manifest.get(paths[i].name), urls[i], verify)
        if entry is None:
            manifest.pop(paths[i].name, None)
            todo.append(i)
        else:
            manifest[paths[i].name] = entry
    write_manifest(out, manifest)
    print(f"{len(indices) - len(todo)} of {len(indices)} file(s) already complete in {out / MANIFEST_FILE}; {len(todo)} to download")
    if not todo:
        return [paths[i] for i in indices]

    stop, lock = threading.Event(), threading.Lock()
    sizes = run_parallel(lambda i: with_retries(lambda: remote_size(urls[i]), urls[i], retries, stop), todo, jobs, stop)
    size_of = dict(zip(todo, sizes))
    held = sum(part_path(paths[i]).stat().st_size for i in todo if part_path(paths[i]).exists())
    total = sum(sizes) if None not in sizes else None
    bar = tqdm(total=total, initial=held, unit="B", unit_scale=True, unit_divisor=1024, desc="download", disable=None, dynamic_ncols=True)

    def progress(n: int) -> None:
        with lock:
            bar.update(n)

    def download(i: int) -> None:
        path, url = paths[i], urls[i]
        part = part_path(path)
        have, size = (part.stat().st_size if part.exists() else 0), size_of[i]
        if size is not None and have > size:  # not a prefix of this file
            part.unlink()
            progress(-have)
        if size is None or have != size:  # else it is complete already (a run stopped before the rename)
            with_retries(lambda: fetch_once(url, part, progress, stop), url, retries, stop)
        if stop.is_set():
            return  # interrupted: the .part file stays for the next run
        try:
            check_official_file(part)
        except UserError as err:
            part.unlink()
            raise UserError(f"{err} (downloaded from {url}; deleted, nothing kept)") from None
        entry = manifest_entry(part, url)
        os.replace(part, path)
        with lock:
            manifest[path.name] = entry
            write_manifest(out, manifest)
            bar.write(f"{path}  {entry['bytes']:,} bytes  sha256 {entry['sha256'][:16]}")

    try:
        run_parallel(download, todo, jobs, stop)
    finally:
        bar.close()
    return [paths[i] for i in indices]
