"""xaibench-data against a local HTTP server (127.0.0.1 only): resume, retries, checksums, safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from xaibench.apps.data_fetch import EXIT_ERROR, EXIT_MANUAL, EXIT_OK, EXIT_USAGE, fetch_asset, main
from xaibench.core.data import download as download_mod
from xaibench.core.data.archive import UnsafeArchiveError, safe_extract
from xaibench.core.data.assets import Asset, load_assets
from xaibench.core.data.download import ChecksumError, DownloadError, download

# --------------------------------------------------------------------------------------------------------------
# a small mirror: serves bytes by name, honours (or ignores) Range, can cut the first response or fail first


@dataclass
class Mirror:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # the first GET is cut after this many body bytes
    ignore_range: bool = False
    fail_first: list[int] = field(default_factory=list)  # statuses answered before serving normally
    log: list[tuple[str, str | None, int]] = field(default_factory=list)  # (name, Range header, status)
    _cut_done: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None, cut: int | None = None) -> None:
        m: Mirror = self.server.mirror  # type: ignore[attr-defined]
        m.log.append((self.path.lstrip("/"), self.headers.get("Range"), status))
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # drop the connection mid-body
            return
        self.wfile.write(body)

    def do_GET(self) -> None:
        m: Mirror = self.server.mirror  # type: ignore[attr-defined]
        data = m.files.get(self.path.lstrip("/"))
        if data is None:
            self._reply(404, b"not found")
            return
        if m.fail_first:
            self._reply(m.fail_first.pop(0), b"busy")
            return
        cut = None
        if m.cut_after is not None and not m._cut_done:
            m._cut_done, cut = True, m.cut_after
        rng = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not m.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            self._reply(206, data[start:], headers, cut)
        else:
            self._reply(200, data, None, cut)


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    m = Mirror(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.mirror = m  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield m
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the backoff delays instead of sleeping (keeps every test well under a second)."""
    delays: list[float] = []
    monkeypatch.setattr(download_mod.time, "sleep", delays.append)
    return delays


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(n))


def _asset(name: str = "blob", sha256: str | None = None, **kw: object) -> Asset:
    return Asset(name=name, url="http://unused.invalid/x", file=f"{name}.bin", sha256=sha256, **kw)  # type: ignore[arg-type]


def _tar_bytes(members: dict[str, bytes], gz: bool = True) -> bytes:
    """A tar (gzip with a fixed mtime: the same members give the same bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0) if gz else buf.getvalue()


def _write_asset_list(path: Path, assets: dict[str, dict[str, object]]) -> Path:
    path.write_text(json.dumps({"assets": assets}), encoding="utf-8")  # JSON is YAML
    return path


# --------------------------------------------------------------------------------------------------------------
# downloads


def test_download_with_recorded_checksum_is_verified(mirror: Mirror, tmp_path: Path) -> None:
    data = _payload()
    mirror.files["blob.bin"] = data
    result = fetch_asset(_asset(sha256=_sha(data)), tmp_path, base_url=mirror.url, progress=False)
    target = tmp_path / "blob.bin"
    assert result.status == "downloaded" and result.verified and not result.pinned
    assert target.read_bytes() == data
    assert not (tmp_path / "blob.bin.part").exists()
    assert (tmp_path / "blob.bin.sha256").read_text().split() == [_sha(data), "blob.bin"]
    # present: not downloaded again, but checked
    again = fetch_asset(_asset(sha256=_sha(data)), tmp_path, base_url=mirror.url, progress=False)
    assert again.status == "present" and again.verified
    assert len(mirror.log) == 1


def test_resume_after_connection_cut(mirror: Mirror, tmp_path: Path, _no_sleep: list[float]) -> None:
    data = _payload()
    mirror.files["blob.bin"] = data
    mirror.cut_after = 100_000
    digest = download(f"{mirror.url}/blob.bin", tmp_path / "blob.bin", sha256=_sha(data), backoff=0.5, progress=True)
    assert digest == _sha(data)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert [(r, s) for _, r, s in mirror.log] == [(None, 200), ("bytes=100000-", 206)]
    assert _no_sleep == [0.5]


def test_server_ignoring_range_restarts_cleanly(mirror: Mirror, tmp_path: Path) -> None:
    data = _payload()
    mirror.files["blob.bin"] = data
    mirror.ignore_range = True
    mirror.cut_after = 120_000
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes from another file")  # must not be kept
    download(f"{mirror.url}/blob.bin", tmp_path / "blob.bin", sha256=_sha(data), backoff=0, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert [(r, s) for _, r, s in mirror.log] == [("bytes=29-", 200), ("bytes=120000-", 200)]


def test_complete_part_file_is_not_downloaded_again(mirror: Mirror, tmp_path: Path) -> None:
    """A run killed between the last byte and the rename: the server answers 416 and the part is used."""
    data = _payload(5000)
    mirror.files["blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(data)
    download(f"{mirror.url}/blob.bin", tmp_path / "blob.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert [(r, s) for _, r, s in mirror.log] == [("bytes=5000-", 416)]


def test_overlong_part_file_restarts(mirror: Mirror, tmp_path: Path) -> None:
    data = _payload(5000)
    mirror.files["blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(data + b"junk")
    download(f"{mirror.url}/blob.bin", tmp_path / "blob.bin", sha256=_sha(data), backoff=0, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert [(r, s) for _, r, s in mirror.log] == [("bytes=5004-", 416), (None, 200)]


def test_retryable_status_then_success(mirror: Mirror, tmp_path: Path, _no_sleep: list[float]) -> None:
    mirror.files["blob.bin"] = b"hello"
    mirror.fail_first = [503, 429]
    download(f"{mirror.url}/blob.bin", tmp_path / "blob.bin", backoff=1.0, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == b"hello"
    assert [s for *_, s in mirror.log] == [503, 429, 200]
    assert _no_sleep == [1.0, 2.0]  # exponential backoff


def test_not_found_is_not_retried(mirror: Mirror, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{mirror.url}/missing.bin", tmp_path / "missing.bin", progress=False)
    assert len(mirror.log) == 1
    assert not (tmp_path / "missing.bin").exists()


def test_checksum_mismatch_leaves_no_file(mirror: Mirror, tmp_path: Path) -> None:
    mirror.files["blob.bin"] = b"the real content"
    with pytest.raises(ChecksumError, match="expected 0{64}, got " + _sha(b"the real content")):
        fetch_asset(_asset(sha256="0" * 64), tmp_path, base_url=mirror.url, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_checksum_mismatch_is_one_line(mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror.files["blob.bin"] = b"the real content"
    spec = _write_asset_list(
        tmp_path / "assets.yaml",
        {"blob": {"url": "http://unused.invalid/blob.bin", "file": "blob.bin", "sha256": "f" * 64}},
    )
    data_dir = tmp_path / "data"
    code = main(["blob", "--assets", str(spec), "--data-dir", str(data_dir), "--base-url", mirror.url, "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "SHA-256 mismatch" in lines[0] and "f" * 64 in lines[0] and _sha(b"the real content") in lines[0]
    assert not (data_dir / "blob.bin").exists() and not (data_dir / "blob.bin.part").exists()


def test_cli_network_error_after_bounded_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _no_sleep: list[float]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _write_asset_list(tmp_path / "a.yaml", {"blob": {"url": "http://unused.invalid/b", "file": "b.bin"}})
    args = ["--assets", str(spec), "--data-dir", str(tmp_path / "d"), "--base-url", f"http://127.0.0.1:{port}"]
    code = main([*args, "--retries", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("xaibench-data: error:")]
    assert len(errors) == 1 and "giving up after 3 attempts" in errors[0] and "Connection refused" in errors[0]
    assert err.count("retry ") == 2  # each retry is announced as a warning
    assert len(_no_sleep) == 2
    assert not (tmp_path / "d" / "b.bin").exists()


def test_trust_on_first_use_pins_and_then_checks(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.files["blob.bin"] = b"version 1"
    first = fetch_asset(_asset(), tmp_path, base_url=mirror.url, progress=False)
    assert first.pinned and not first.verified and first.sha256 == _sha(b"version 1")
    assert (tmp_path / "blob.bin.sha256").read_text().split()[0] == _sha(b"version 1")
    # upstream changes: a forced re-download is checked against the pin and refused
    mirror.files["blob.bin"] = b"version 2"
    with pytest.raises(ChecksumError, match="pinned on first use"):
        fetch_asset(_asset(), tmp_path, base_url=mirror.url, force=True, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == b"version 1"  # the old file is untouched


def test_present_file_with_wrong_checksum_is_reported_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"corrupt")
    with pytest.raises(ChecksumError, match="exists but its SHA-256 does not match"):
        fetch_asset(_asset(sha256="a" * 64), tmp_path, base_url="http://127.0.0.1:9", progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == b"corrupt"


def test_html_error_page_is_not_accepted_as_weights(mirror: Mirror, tmp_path: Path) -> None:
    mirror.files["blob.bin"] = b"<html><body>rate limited</body></html>"
    with pytest.raises(DownloadError, match="not a safetensors file"):
        fetch_asset(_asset(format="safetensors"), tmp_path, base_url=mirror.url, progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# archives


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_tar_with_dotdot_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_bytes({"movies/ok.txt": b"ok", "movies/../../evil.txt": b"pwned"}))
    before = _tree(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.'"):
        safe_extract(archive, tmp_path / "data" / "movies")
    assert _tree(tmp_path) - before <= {"data"}  # at most the (empty) parent folder
    assert not list(tmp_path.parent.rglob("evil.txt"))


def test_tar_with_absolute_member_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "abs_evil.txt"
    archive = tmp_path / "abs.tar"
    archive.write_bytes(_tar_bytes({str(outside): b"pwned"}, gz=False))
    assert tarfile.open(archive).getnames()[0].startswith("/")  # really stored as absolute
    with pytest.raises(UnsafeArchiveError, match="absolute path"):
        safe_extract(archive, tmp_path / "data" / "x")
    assert not outside.exists()
    assert not (tmp_path / "data" / "x").exists()
    assert list((tmp_path / "data").iterdir()) == []  # no temporary folder left behind


@pytest.mark.parametrize(
    ("kind", "link"),
    [(tarfile.SYMTYPE, "../../etc"), (tarfile.SYMTYPE, "/etc"), (tarfile.LNKTYPE, "../outside.txt")],
)
def test_tar_with_escaping_link_is_refused(tmp_path: Path, kind: bytes, link: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("pkg/link")
        info.type, info.linkname = kind, link
        tar.addfile(info)
    (tmp_path / "links.tar").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="points"):
        safe_extract(tmp_path / "links.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_member_under_symlink_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("pkg/inner")
        link.type, link.linkname = tarfile.SYMTYPE, "."
        tar.addfile(link)
        f = tarfile.TarInfo("pkg/inner/file.txt")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    (tmp_path / "t.tar").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="under a symlink"):
        safe_extract(tmp_path / "t.tar", tmp_path / "out")


def _movies_tar() -> bytes:
    return _tar_bytes(
        {
            "movies/docs/negR_000.txt": b"a bad film .\n",
            "movies/docs/posR_000.txt": b"a good film .\n",
            "movies/train.jsonl": b"{}\n",
            "movies/val.jsonl": b"{}\n",
            "movies/test.jsonl": b"{}\n",
        }
    )


def test_good_tar_gz_extracts_and_replaces_atomically(tmp_path: Path) -> None:
    archive = tmp_path / "movies.tar.gz"
    archive.write_bytes(_movies_tar())
    dest = tmp_path / "data" / "movies"
    expect = ["docs", "train.jsonl", "val.jsonl", "test.jsonl"]
    assert safe_extract(archive, dest, expect=expect) == dest
    assert (dest / "docs" / "posR_000.txt").read_bytes() == b"a good film .\n"
    assert sorted(p.name for p in dest.iterdir()) == ["docs", "test.jsonl", "train.jsonl", "val.jsonl"]
    # again over an existing folder: replaced, no temporary folders left
    (dest / "stale").write_text("old")
    safe_extract(archive, dest, expect=expect)
    assert not (dest / "stale").exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["movies"]


def test_archive_without_expected_entries_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz").write_bytes(_tar_bytes({"other/readme.txt": b"hi"}))
    with pytest.raises(ValueError, match="expected"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out", expect=["docs"])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------
# the packaged asset list and the CLI end to end (through --base-url)


def test_packaged_asset_list() -> None:
    assets = load_assets()
    families = ["deit_base", "deit_base_distilled", "dinov2_vits14", "dinov2_vits14_reg", "mae", "clip"]
    assert list(assets) == ["imagenet_seg", "eraser_movies", "vit_base", *families, "imagenet_val"]
    assert [n for n, a in assets.items() if a.optional] == families
    assert assets["imagenet_seg"].url == "http://calvin-vision.net/bigstuff/proj-imagenet/data/gtsegs_ijcv.mat"
    assert assets["eraser_movies"].url == "http://www.eraserbenchmark.com/zipped/movies.tar.gz"
    assert assets["eraser_movies"].extract_to == "movies"
    assert assets["vit_base"].url == (
        "https://huggingface.co/timm/vit_base_patch16_224.orig_in21k_ft_in1k/resolve/main/model.safetensors"
    )
    assert assets["imagenet_val"].manual
    for a in assets.values():
        assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256)


@pytest.mark.parametrize(
    "name", ["vit_base", "deit_base", "deit_base_distilled", "dinov2_vits14", "dinov2_vits14_reg", "mae", "clip"]
)
def test_weight_assets_are_where_their_model_configs_look(name: str, tmp_path: Path) -> None:
    """`xaibench-data <family>` puts the weights at the model config's checkpoint_path, from timm's hub repo."""
    from xaibench.core.config import compose_config

    cfg = compose_config([f"model={name}", f"paths.data_dir={tmp_path}"])
    asset = load_assets()[name]
    assert cfg.model.checkpoint_path == str(tmp_path / asset.file)
    assert asset.url == f"https://huggingface.co/timm/{cfg.model.arch}/resolve/main/model.safetensors"


def test_optional_assets_are_fetched_by_name_only(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    mirror.files["deit_base_patch16_224.fb_in1k.safetensors"] = struct.pack("<Q", len(header)) + header + bytes(4)
    data = tmp_path / "data"
    assert main(["deit_base", "--data-dir", str(data), "--base-url", mirror.url, "--quiet"]) == EXIT_OK
    assert (data / "weights" / "deit_base_patch16_224.fb_in1k.safetensors").is_file()
    assert mirror.log and all(name == "deit_base_patch16_224.fb_in1k.safetensors" for name, _, _ in mirror.log)
    capsys.readouterr()
    assert main(["--list", "--data-dir", str(data)]) == EXIT_OK
    listing = capsys.readouterr().out
    assert listing.count("optional: fetched only by name") == 6
    with pytest.raises(ValueError, match="optional must be true or false"):
        load_assets(_write_asset_list(tmp_path / "o.yaml", {"x": {"url": "http://h/x", "file": "x", "optional": "y"}}))


def test_asset_list_validation(tmp_path: Path) -> None:
    bad = _write_asset_list(tmp_path / "a.yaml", {"x": {"url": "http://h/x", "file": "x", "sha256": "abc"}})
    with pytest.raises(ValueError, match="'x'.*sha256"):
        load_assets(bad)
    bad = _write_asset_list(tmp_path / "b.yaml", {"x": {"url": "http://h/x", "file": "../x"}})
    with pytest.raises(ValueError, match="inside the data folder"):
        load_assets(bad)


def _fake_assets() -> dict[str, bytes]:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return {
        "gtsegs_ijcv.mat": b"MATLAB 7.3 MAT-file, Platform: test" + bytes(600),
        "movies.tar.gz": _movies_tar(),
        "vit_base_patch16_224.orig_in21k_ft_in1k.safetensors": struct.pack("<Q", len(header)) + header + bytes(4),
    }


def test_cli_fetches_every_asset_from_a_mirror(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.files.update(_fake_assets())
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "--base-url", mirror.url, "--quiet"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert (data / "gtsegs_ijcv.mat").is_file()
    assert (data / "weights" / "vit_base_patch16_224.orig_in21k_ft_in1k.safetensors").is_file()
    assert sorted(p.name for p in (data / "movies").iterdir()) == ["docs", "test.jsonl", "train.jsonl", "val.jsonl"]
    for name, blob in _fake_assets().items():  # first use: hash printed, pinned, and flagged as unverified
        assert _sha(blob) in out
        assert next(data.rglob(name + ".sha256")).read_text().split()[0] == _sha(blob)
    assert out.count("NOT verified") == 3 and err.count("NOT VERIFIED") == 3
    assert "imagenet_val: not downloadable" in out
    assert not list(data.rglob("*.part"))
    # second run: nothing downloaded, everything checked against the pins
    n = len(mirror.log)
    assert main(["--data-dir", str(data), "--base-url", mirror.url, "--quiet"]) == EXIT_OK
    assert len(mirror.log) == n and capsys.readouterr().out.count("matches the pin") == 3
    # --list shows the state
    assert main(["--list", "--data-dir", str(data)]) == EXIT_OK
    listing = capsys.readouterr().out
    assert listing.count("present") == 3 and "pinned on first use" in listing


def test_cli_unknown_asset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagenet_sge", "--data-dir", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown asset(s) imagenet_sge" in err and "imagenet_seg, eraser_movies, vit_base, deit_base" in err


def test_cli_imagenet_val_prints_instructions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagenet_val", "--data-dir", str(tmp_path)]) == EXIT_MANUAL
    out = capsys.readouterr().out
    root = tmp_path / "imagenet" / "val"
    for needle in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz", "LOC_val_solution.csv", str(root)):
        assert needle in out
    assert not root.exists()
    # once the user put images there, it is reported present
    root.mkdir(parents=True)
    (root / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    assert main(["imagenet_val", "--data-dir", str(tmp_path)]) == EXIT_OK


def test_cli_default_data_dir_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XAIBENCH_DATA", str(tmp_path / "env-data"))
    assert main(["--list"]) == EXIT_OK
    assert f"data folder: {tmp_path / 'env-data'}" in capsys.readouterr().out
