"""Safe extraction of tar and zip archives into a folder that appears whole or not at all.

Every member is checked before anything is written: absolute paths, ``..`` components, links whose
target leaves the archive, members reached through a symlink, and device files/FIFOs are refused with
:class:`UnsafeArchiveError`. The archive is extracted into a temporary folder beside the destination
(tar also under Python's ``filter="data"`` where the interpreter has it, as a second line of defence),
and the result is renamed into place, so the destination never holds a half-extracted tree.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class UnsafeArchiveError(ValueError):
    """An archive member would be written (or would point) outside the destination folder."""


def _check_name(name: str, archive: Path) -> str:
    """Return the normalised relative name of a member, or raise if it could leave the destination."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{archive.name}: member with an empty or NUL-containing name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an absolute path; refusing to extract")
    if ".." in unified.split("/"):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} contains '..'; refusing to extract")
    normal = posixpath.normpath(unified)
    return "" if normal == "." else normal


def _escapes(path: str) -> bool:
    """True when a normalised relative path points above its root."""
    return path == ".." or path.startswith("../") or path.startswith("/")


def _check_tar(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    symlinks: set[str] = set()
    for m in members:
        name = _check_name(m.name, archive)
        parts = name.split("/") if name else []
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} lies under a symlink; refusing to extract")
        if m.issym() or m.islnk():
            target = m.linkname.replace("\\", "/")
            kind = "symlink" if m.issym() else "hardlink"
            if not target or target.startswith("/") or (len(target) > 1 and target[1] == ":"):
                raise UnsafeArchiveError(
                    f"{archive.name}: {kind} {m.name!r} -> {m.linkname!r} points to an absolute path; refusing"
                )
            # a symlink's target is relative to the link's folder, a hardlink's to the archive root
            base = posixpath.dirname(name) if m.issym() else ""
            resolved = posixpath.normpath(posixpath.join(base, target))
            if _escapes(resolved):
                raise UnsafeArchiveError(
                    f"{archive.name}: {kind} {m.name!r} -> {m.linkname!r} points outside the archive; refusing"
                )
            if m.issym():
                symlinks.add(name)
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a device or FIFO; refusing to extract")
    return members


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        _check_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a symlink; refusing to extract")


def _find_root(tmp: Path, expect: Sequence[str], archive: Path) -> Path:
    """The extracted folder that holds every ``expect`` entry: the top level or one folder below it."""
    if not expect:
        return tmp
    candidates = [tmp] + sorted(p for p in tmp.iterdir() if p.is_dir() and not p.is_symlink())
    for c in candidates:
        if all((c / e).exists() for e in expect):
            return c
    found = sorted(p.name for p in tmp.iterdir())[:10]
    raise ValueError(
        f"{archive.name}: expected {list(expect)} at the top of the archive or in one folder below it; found {found}"
    )


def _replace_dir(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest``; an existing ``dest`` is swapped out and removed only after success."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(src, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    old.rmdir()
    os.rename(dest, old)
    try:
        os.rename(src, dest)
    except OSError:
        os.rename(old, dest)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def safe_extract(archive: str | Path, dest: str | Path, *, expect: Sequence[str] = ()) -> Path:
    """Extract a tar (any compression) or zip archive to ``dest``, safely and atomically.

    Args:
        archive: the archive file.
        dest: the folder to create (replaced if it exists, only after a successful extraction).
        expect: entries the extracted folder must hold. When given, the folder is the archive's top level
            or the one folder below it that holds them all (``movies.tar.gz`` wraps its files in
            ``movies/``); without it the top level is taken as is.

    Returns:
        ``dest``.

    Raises:
        UnsafeArchiveError: a member with an absolute path or ``..``, a link leaving the archive, a member
            under a symlink, a device file; nothing is written in that case (checks precede extraction).
        ValueError: not a tar or zip archive, or ``expect`` entries missing.
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = _check_tar(tar, archive)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                try:
                    tar.extractall(tmp, members=members, **kwargs)
                except getattr(tarfile, "FilterError", UnsafeArchiveError) as exc:
                    raise UnsafeArchiveError(f"{archive.name}: {exc}") from None
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                zf.extractall(tmp)
        else:
            raise ValueError(f"{archive}: not a tar or zip archive")
        root = _find_root(tmp, expect, archive)
        if root == tmp:
            tmp.chmod(0o755)  # mkdtemp made it private; the extracted folder is ordinary data
        _replace_dir(root, dest)
        log.info("extracted %s to %s", archive.name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
