"""`python -m eval.convert download-official`, against generated official-format files served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import eval.download as download
from eval.convert import main as convert_main
from models.classifier import load_classifier
from models.errors import UserError
from tests.test_eval_helpers import TINY_ARCH
from tests.test_interop_official import Exploit, official_state


def official_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    torch.save(official_state(seed), buffer)
    return buffer.getvalue()


@dataclass
class Release:
    """What the local server serves, how it misbehaves, and the requests it saw."""

    files: dict[str, bytes]
    modes: dict[str, str] = field(
        default_factory=dict
    )  # name -> "404" | "drop_once" | "truncate" | "stop_at" | "no_head" | "ignore_range" | "wrong_range"
    stop_at: int = 0  # for "stop_at": the server never sends bytes past this offset
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, name, Range header)
    base_url: str = ""

    def gets(self) -> list[tuple[str, str | None]]:
        return [(name, byte_range) for method, name, byte_range in self.requests if method == "GET"]


class ReleaseHandler(BaseHTTPRequestHandler):
    """Serves `Release.files` with Range support; each failure mode sends a short body and closes."""

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        if self.server.release.modes.get(self.path.rsplit("/", 1)[-1]) == "no_head":  # type: ignore[attr-defined]
            self.send_error(405)  # like a storage URL signed for GET only
            return
        self.respond(send_body=False)

    def do_GET(self) -> None:
        self.respond(send_body=True)

    def respond(self, send_body: bool) -> None:
        release: Release = self.server.release  # type: ignore[attr-defined]
        name, byte_range = self.path.rsplit("/", 1)[-1], self.headers.get("Range")
        release.requests.append((self.command, name, byte_range))
        data, mode = release.files.get(name), release.modes.get(name)
        if data is None or mode == "404":
            self.send_error(404)
            return
        if mode == "ignore_range":
            byte_range = None
        start = int(re.fullmatch(r"bytes=(\d+)-", byte_range)[1]) if byte_range and mode != "wrong_range" else 0
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if byte_range else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if byte_range:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        body = data[start:]
        if mode == "truncate":
            body = body[:-10]
        elif mode == "drop_once":
            body = body[: len(body) // 2]
            release.modes.pop(name)
        elif mode == "stop_at":
            body = data[start : release.stop_at]
        self.wfile.write(body)
        self.close_connection = True


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up mid-body (the full-disk case) is expected; stderr must stay one line


@pytest.fixture
def release(monkeypatch) -> Iterator[Release]:
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    monkeypatch.setattr(download, "TIMEOUT_S", 10.0)
    served = Release({f"model_{i}.pt": official_bytes(i) for i in range(3)})
    server = QuietServer(("127.0.0.1", 0), ReleaseHandler)
    server.release = served  # type: ignore[attr-defined]
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}/releases/v0.0.2"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def fetch(release: Release, out: Path, *extra: str) -> int:
    return convert_main(["download-official", "--out", str(out), "--base-url", release.base_url, "--jobs", "2", *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_models_ranges_parse():
    assert download.parse_models("0-71") == list(range(72))
    assert download.parse_models("5, 0-2,4,2") == [0, 1, 2, 4, 5]
    for bad in ("3-1", "72", "0-72", "a", "", "1-"):
        with pytest.raises(UserError, match="--models"):
            download.parse_models(bad)


def test_official_layout_is_what_model_soups_saves():
    state = official_state(0)
    assert download.official_layout_problem(state) is None
    assert "text-tower" in download.official_layout_problem({**state, "model.transformer.resblocks.0.ln_1.weight": torch.ones(1)})
    assert "classification_head.bias" in download.official_layout_problem(
        {k: v for k, v in state.items() if k != "classification_head.bias"}
    )
    assert "unexpected key 'positional_embedding'" in download.official_layout_problem(
        {k.removeprefix("model."): v for k, v in state.items()}
    )
    assert download.model_url(download.OFFICIAL_BASE_URL, 7).endswith("/model-soups/releases/download/v0.0.2/model_7.pt")


def test_a_complete_run_is_recorded_and_a_rerun_fetches_nothing(release, tmp_path, capsys):
    out = tmp_path / "official"
    assert fetch(release, out, "--models", "0-2", "--import-to", str(tmp_path / "imported"), "--arch", TINY_ARCH) == 0
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert list(manifest) == ["model_0.pt", "model_1.pt", "model_2.pt"]
    for name, data in release.files.items():
        assert (out / name).read_bytes() == data
        assert manifest[name]["sha256"] == hashlib.sha256(data).hexdigest() and manifest[name]["bytes"] == len(data)
    assert sorted(release.gets()) == [(name, None) for name in release.files] and not list(out.glob("*.part"))
    classifier, meta = load_classifier(tmp_path / "imported" / "model_1.safetensors")  # --import-to went through import-official
    torch.testing.assert_close(classifier.state_dict()["head.bias"], official_state(1)["classification_head.bias"], rtol=0, atol=0)
    assert meta.kind == "individual"

    release.requests.clear()
    assert fetch(release, out, "--models", "0-2") == 0
    assert release.requests == [] and "3 of 3 file(s) already complete" in capsys.readouterr().out


def test_verify_rehashes_and_replaces_a_changed_file(release, tmp_path, capsys):
    out = tmp_path / "official"
    assert fetch(release, out, "--models", "0-2") == 0
    corrupt = bytearray(release.files["model_1.pt"])
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size: only the hash can tell
    (out / "model_1.pt").write_bytes(bytes(corrupt))
    release.requests.clear()
    assert fetch(release, out, "--models", "0-2") == 0
    assert release.gets() == [] and (out / "model_1.pt").read_bytes() == bytes(corrupt)  # a plain rerun trusts sizes
    assert fetch(release, out, "--models", "0-2", "--verify") == 0
    assert release.gets() == [("model_1.pt", None)] and (out / "model_1.pt").read_bytes() == release.files["model_1.pt"]
    assert "model_1.pt: sha256 differs from manifest.json" in capsys.readouterr().out


def test_a_run_stopped_mid_file_resumes_with_a_range_request(release, tmp_path, capsys):
    out, data = tmp_path / "official", release.files["model_0.pt"]
    release.modes["model_0.pt"], release.stop_at = "stop_at", len(data) // 3
    assert fetch(release, out, "--models", "0", "--retries", "0") == 2
    assert "truncated response" in one_error_line(capsys)
    assert (out / "model_0.pt.part").read_bytes() == data[: len(data) // 3] and not (out / "model_0.pt").exists()

    release.modes.clear()
    release.requests.clear()
    assert fetch(release, out, "--models", "0") == 0
    assert release.gets() == [("model_0.pt", f"bytes={len(data) // 3}-")]
    assert (out / "model_0.pt").read_bytes() == data and not (out / "model_0.pt.part").exists()


def test_a_dropped_connection_is_retried_from_where_it_stopped(release, tmp_path):
    out, data = tmp_path / "official", release.files["model_2.pt"]
    release.modes["model_2.pt"] = "drop_once"
    assert fetch(release, out, "--models", "2") == 0
    assert release.gets() == [("model_2.pt", None), ("model_2.pt", f"bytes={len(data) // 2}-")]
    assert (out / "model_2.pt").read_bytes() == data


def test_a_missing_file_is_one_line(release, tmp_path, capsys):
    out = tmp_path / "official"
    release.modes["model_1.pt"] = "404"
    assert fetch(release, out, "--models", "0-2") == 2
    err = one_error_line(capsys)
    assert "model_1.pt: HTTP 404" in err and "--base-url" in err
    assert not (out / "model_1.pt").exists() and release.gets() == []  # sizes are asked for first: nothing fetched


def test_a_truncated_response_is_one_line_after_bounded_retries(release, tmp_path, capsys):
    out = tmp_path / "official"
    release.modes["model_0.pt"] = "truncate"
    assert fetch(release, out, "--models", "0", "--retries", "2") == 2
    err = one_error_line(capsys)
    assert "model_0.pt: truncated response" in err and "gave up after 2 retries" in err
    assert len(release.gets()) == 3 and not (out / "model_0.pt").exists()


def test_a_pickle_with_code_is_refused_and_not_kept(release, tmp_path, capsys):
    marker, out = tmp_path / "pwned", tmp_path / "official"
    Exploit.marker = marker
    buffer = io.BytesIO()
    torch.save({**official_state(0), "payload": Exploit()}, buffer)
    release.files["model_0.pt"] = buffer.getvalue()
    assert fetch(release, out, "--models", "0") == 2
    err = one_error_line(capsys)
    assert "refused to unpickle" in err and "nothing kept" in err
    assert not marker.exists() and list(out.glob("model_0*")) == []
    assert json.loads((out / "manifest.json").read_text())["files"] == {}


def test_no_network_is_one_line(release, tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["download-official", "--out", str(tmp_path / "official"), "--models", "0"]
    assert convert_main([*args, "--base-url", f"http://127.0.0.1:{port}", "--retries", "1"]) == 2
    assert "cannot connect" in one_error_line(capsys)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line(release, tmp_path, capsys):
    out = tmp_path / "official"
    out.mkdir()
    (out / "model_0.pt.part").symlink_to("/dev/full")  # every write fails with ENOSPC
    assert fetch(release, out, "--models", "0") == 2
    assert "no space left on the device" in one_error_line(capsys)
    assert not (out / "model_0.pt").exists()


def test_files_placed_by_hand_are_checked_and_adopted(release, tmp_path, capsys):
    out = tmp_path / "official"
    out.mkdir()
    (out / "model_0.pt").write_bytes(release.files["model_0.pt"])  # e.g. fetched with wget earlier
    (out / "model_1.pt").write_bytes(release.files["model_1.pt"][:-100])  # an interrupted wget
    assert fetch(release, out, "--models", "0-1") == 0
    assert release.gets() == [("model_1.pt", None)] and "model_1.pt: unreadable .pt file" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    for name in ("model_0.pt", "model_1.pt"):
        assert (out / name).read_bytes() == release.files[name]
        assert manifest[name]["sha256"] == hashlib.sha256(release.files[name]).hexdigest()


@pytest.mark.parametrize("head", [True, False])
def test_a_complete_part_left_by_a_stopped_run_is_finished(release, tmp_path, head):
    out, data = tmp_path / "official", release.files["model_0.pt"]
    out.mkdir()
    (out / "model_0.pt.part").write_bytes(data)  # complete, but the run stopped before the rename
    if not head:
        release.modes["model_0.pt"] = "no_head"
    assert fetch(release, out, "--models", "0") == 0
    # the size from HEAD shows it is complete; without it, the Range request gets 416 and the file starts over
    assert release.gets() == ([] if head else [("model_0.pt", f"bytes={len(data)}-"), ("model_0.pt", None)])
    assert (out / "model_0.pt").read_bytes() == data and not (out / "model_0.pt.part").exists()


@pytest.mark.parametrize("mode", ["ignore_range", "wrong_range"])
def test_a_server_that_does_not_resume_properly_gets_the_whole_file(release, tmp_path, mode):
    out, data = tmp_path / "official", release.files["model_0.pt"]
    out.mkdir()
    (out / "model_0.pt.part").write_bytes(data[: len(data) // 2])
    release.modes["model_0.pt"] = mode  # 200 with the whole file, or 206 starting at byte 0 instead of the asked offset
    assert fetch(release, out, "--models", "0") == 0
    again = [("model_0.pt", None)] if mode == "wrong_range" else []
    assert release.gets() == [("model_0.pt", f"bytes={len(data) // 2}-"), *again]
    assert (out / "model_0.pt").read_bytes() == data
