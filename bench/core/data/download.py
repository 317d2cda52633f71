"""Resumable HTTP downloads with bounded retries, SHA-256 checks and atomic placement.

A download goes to ``<file>.part``; an interrupted one is resumed with an HTTP ``Range`` request (a server
that ignores ``Range`` and answers 200 restarts the file from byte 0). Only a complete, checked file is
moved to its final name with :func:`os.replace`, so the final name never holds a half-written or
unverified download.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import struct
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from xaibench.core.io import sha256_file

log = logging.getLogger(__name__)

USER_AGENT = "xaibench-data/0.1"
#: HTTP statuses worth retrying; anything else (404, 403, ...) fails at once
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed for good (after the retries, or at once for a non-retryable HTTP status)."""


class ChecksumError(RuntimeError):
    """A file's SHA-256 differs from the recorded one."""


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may fix."""


def sidecar_path(path: str | Path) -> Path:
    """``<file>.sha256``: where a trust-on-first-use checksum is pinned."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_sidecar(path: str | Path) -> str | None:
    """The pinned SHA-256 of ``path`` (``sha256sum`` format), or ``None`` when there is no valid sidecar."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    words = side.read_text(encoding="utf-8").split()
    if words and re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        return words[0].lower()
    log.warning("ignoring malformed checksum file %s", side)
    return None


def write_sidecar(path: str | Path, digest: str) -> Path:
    """Write ``<digest>  <name>`` to ``<file>.sha256`` atomically (``sha256sum -c`` can check it)."""
    path = Path(path)
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, side)
    return side


def sniff(path: str | Path, fmt: str | None) -> str | None:
    """Cheap check that a file looks like ``fmt`` (catches an HTML error page saved under a data name).

    Args:
        path: the file.
        fmt: ``mat`` (MATLAB header text; v7.3 files are HDF5 behind it), ``safetensors`` (8-byte header
            length + JSON header), ``tar``, ``zip``, or ``None`` (no check).

    Returns:
        ``None`` when the file passes, else a short reason.
    """
    if fmt is None:
        return None
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if fmt == "mat":
        return None if head.startswith(b"MATLAB") else f"no MATLAB header (starts with {head[:16]!r})"
    if fmt == "safetensors":
        size = path.stat().st_size
        if len(head) < 9:
            return "too short for a safetensors file"
        (n,) = struct.unpack("<Q", head[:8])
        if not 2 <= n <= size - 8 or head[8:9] != b"{":
            return f"no safetensors header (starts with {head[:16]!r})"
        with open(path, "rb") as fh:
            fh.seek(8)
            try:
                json.loads(fh.read(n))
            except (ValueError, UnicodeDecodeError):
                return "safetensors header is not valid JSON"
        return None
    if fmt == "tar":
        return None if tarfile.is_tarfile(path) else "not a tar archive"
    if fmt == "zip":
        return None if zipfile.is_zipfile(path) else "not a zip archive"
    raise ValueError(f"unknown format {fmt!r}")


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` -> ``(START, TOTAL or None)``; ``None`` when absent or malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _attempt(url: str, part: Path, *, timeout: float, desc: str, progress: bool) -> None:
    """One request: append to (or restart) ``part`` until the server's byte count is reached.

    Raises:
        _Retry: a network error, a retryable status, or a connection closed early.
        DownloadError: a status no retry can fix.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # the part file is at least as long as the remote file: complete if the sizes agree
            m = re.fullmatch(r"bytes\s+\*/(\d+)", (exc.headers or {}).get("Content-Range", "").strip())
            if m and int(m.group(1)) == offset:
                log.info("%s: the partial download is already complete (%d bytes)", desc, offset)
                return
            log.warning("%s: server refused to resume at byte %d (416); restarting", desc, offset)
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 at byte {offset}") from None
        if exc.code in RETRY_STATUSES:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retry(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None

    with resp:
        status = resp.status
        if offset and status == 206:
            crange = _parse_content_range(resp.headers.get("Content-Range"))
            if crange is None or crange[0] != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"unexpected Content-Range {resp.headers.get('Content-Range')!r} for byte {offset}")
            total = crange[1]
            mode = "ab"
        elif status == 200:
            if offset:
                log.info("%s: server ignored the Range request; restarting from byte 0", desc)
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {status}")

        written = offset
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not progress,
            leave=False,
        )
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        block = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Retry(f"connection lost at byte {written}: {type(exc).__name__}") from None
                    if not block:
                        break
                    fh.write(block)
                    written += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    # http.client returns b"" (no error) when the peer closes early; compare with the announced size
    if total is not None and written != total:
        raise _Retry(f"connection closed at byte {written} of {total}")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    fmt: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    desc: str | None = None,
) -> str:
    """Download ``url`` to ``dest`` resumably; verify; then move it into place.

    The bytes go to ``<dest>.part`` (kept across runs, so an interrupted download resumes with a
    ``Range`` request). When the server reports the full size, the part file is checked against it; then
    its SHA-256 is computed and, when ``sha256`` is given, compared. Only then is it renamed to ``dest``.

    Args:
        url: http(s) URL (redirects are followed).
        dest: final path; its parent folder is created.
        sha256: expected lower-case hex digest, or ``None`` to accept any content (the caller decides
            what to do with the returned digest: see :mod:`xaibench.apps.data_fetch` for trust on first use).
        fmt: optional content check (:func:`sniff`) applied before the file is accepted.
        retries: further attempts after the first for network errors, retryable HTTP statuses (408, 425,
            429, 5xx) and connections closed early; each resumes where the last stopped.
        backoff: seconds before the first retry, doubled each time (capped at 60 s).
        timeout: socket timeout in seconds per request.
        progress: show a tqdm bar (stderr).
        desc: label of the progress bar and log lines (default: the file name).

    Returns:
        The SHA-256 of the file now at ``dest``.

    Raises:
        DownloadError: the download did not complete after ``1 + retries`` attempts, a non-retryable HTTP
            status, or content that fails ``fmt`` (the part file is then removed).
        ChecksumError: the digest differs from ``sha256``; the part file is removed and nothing is
            written under ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    desc = desc or dest.name
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            delay = min(backoff * 2 ** (attempt - 1), 60.0)
            log.warning("%s: %s; retry %d/%d in %.1f s", desc, last, attempt, retries, delay)
            time.sleep(delay)
        try:
            _attempt(url, part, timeout=timeout, desc=desc, progress=progress)
            break
        except _Retry as exc:
            last = str(exc)
    else:
        raise DownloadError(f"{url}: giving up after {retries + 1} attempts ({last}); re-run to resume")

    reason = sniff(part, fmt)
    if reason is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: the download is not a {fmt} file ({reason}); discarded")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: SHA-256 mismatch: expected {sha256.lower()}, got {digest}; the download was discarded"
        )
    os.replace(part, dest)
    return digest
