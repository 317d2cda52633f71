"""Chunk files of the attribution cache: immutable HDF5 files written to a temporary name, marked complete,
fsynced and renamed with the SHA-256 of their bytes in the name (see :mod:`xaibench.core.cache`)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from xaibench.core.io import sha256_file, write_error

FORMAT = "xaibench-attribution-cache"
VERSION = 1
log = logging.getLogger("xaibench.core.cache")
#: dtypes numpy/HDF5 lack: stored as float32, cast back on read
_WIDENED = {torch.bfloat16: torch.float32}


def _chunk_digest(path: Path) -> str:
    """First 32 hex digits of the SHA-256 of a file's bytes."""
    return sha256_file(path)[:32]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().to("cpu")
    if t.dtype in _WIDENED:
        t = t.to(_WIDENED[t.dtype])
    return t.contiguous().numpy()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def validate_chunk(chunk: Path, config_hash: str) -> tuple[list[str], str]:
    """The ids and map level of a complete, intact chunk of the cache with ``config_hash``; raises otherwise."""
    # check the bytes first: a corrupted HDF5 file can make the HDF5 library hang, not just raise
    stated = chunk.stem.rsplit("-", 1)[-1]
    if len(stated) != 32 or _chunk_digest(chunk) != stated:
        raise ValueError("content does not match the SHA-256 in its name (corrupt or truncated)")
    with h5py.File(chunk, "r") as f:
        attrs = f.attrs
        if not bool(attrs.get("complete", False)):
            raise ValueError("not marked complete")
        if attrs.get("format") != FORMAT or int(attrs.get("version", -1)) != VERSION:
            raise ValueError("not an xaibench cache chunk of this version")
        if attrs.get("config_hash") != config_hash:
            raise ValueError(f"config hash {attrs.get('config_hash')!r} differs from the cache's")
        n = int(attrs["n"])
        for name in ("ids", "targets", "logits", "maps"):
            if f[name].shape[0] != n:
                raise ValueError(f"dataset {name!r} has {f[name].shape[0]} rows, expected {n}")
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
        level = str(attrs["level"])
    return ids, level


def write_chunk(
    folder: Path,
    name: str,
    parts: Iterable[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    map_dtype: torch.dtype,
    logits_dtype: torch.dtype,
    n: int,
    config_hash: str,
    level: str,
    fsync: bool = True,
    in_memory: bool = True,
) -> str:
    """Stream ``parts`` into resizable datasets of an HDF5 file, mark it complete, write it to
    ``.<name>.tmp``, fsync, and rename it to ``name`` with the SHA-256 of its bytes embedded
    (``chunk-...-<sha32>.h5``); returns the final name.

    With ``in_memory`` (every chunk a job writes; at most ``cache_chunk_size`` samples) the HDF5 file is
    built in memory and written with plain file I/O, so a full disk is an ``OSError`` naming the folder
    (HDF5 itself can crash the process when a write fails) and nothing is left behind. Compaction streams
    to disk instead, after checking the free space.
    """
    tmp = folder / f".{name}.tmp"
    target: Any = io.BytesIO() if in_memory else tmp
    try:
        with h5py.File(target, "w") as f:
            f.attrs.update(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "config_hash": config_hash,
                    "level": level,
                    "map_dtype": _dtype_name(map_dtype),
                    "logits_dtype": _dtype_name(logits_dtype),
                }
            )
            rows = 0
            for ids, maps, targets, logits in parts:
                arrays = {
                    "ids": np.asarray(ids, dtype=object),
                    "maps": _to_numpy(maps),
                    "targets": targets.numpy(),
                    "logits": _to_numpy(logits),
                }
                for key, array in arrays.items():
                    if key not in f:
                        row_bytes = max(1, array[:1].nbytes)
                        chunk_rows = int(min(1024, max(1, 65536 // row_bytes)))
                        f.create_dataset(
                            key,
                            shape=(0, *array.shape[1:]),
                            maxshape=(None, *array.shape[1:]),
                            dtype=h5py.string_dtype("utf-8") if key == "ids" else array.dtype,
                            chunks=(chunk_rows, *array.shape[1:]),
                        )
                    ds = f[key]
                    ds.resize(rows + array.shape[0], axis=0)
                    ds[rows : rows + array.shape[0]] = array
                rows += len(ids)
            if rows != n:
                raise RuntimeError(f"wrote {rows} rows, expected {n}")
            f.attrs["n"] = rows
            f.attrs["complete"] = True  # last: a chunk without it is never read
        if in_memory:
            data = target.getvalue()
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    if fsync:
                        os.fsync(fh.fileno())
            except OSError as exc:
                raise write_error(exc, folder, len(data)) from None
            digest = hashlib.sha256(data).hexdigest()[:32]
        else:
            if fsync:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            digest = _chunk_digest(tmp)
        name = name.removesuffix(".h5") + f"-{digest}.h5"
        os.replace(tmp, folder / name)
        if fsync:
            _fsync_dir(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name


def compact(folder: Path, index: dict[str, tuple[str, int]], *, config_hash: str, level: str, fsync: bool) -> None:
    """Merge the chunks of a cache folder into one file per map shape/dtype (streamed; atomic like every
    write), updating ``index`` (``{id: (chunk name, row)}``) in place.

    A kill during compaction leaves the old chunks (and possibly the new file: duplicate ids are
    read once), never a partial file.
    """
    chunks = sorted({name for name, _ in index.values()})
    groups: dict[tuple, list[str]] = {}
    for name in chunks:
        with h5py.File(folder / name, "r") as f:
            sig = (
                f["maps"].shape[1:],
                str(f.attrs["map_dtype"]),
                f["logits"].shape[1:],
                str(f.attrs["logits_dtype"]),
            )
        groups.setdefault(sig, []).append(name)
    for (_, map_dtype, _, logits_dtype), names in groups.items():
        if len(names) < 2:
            continue
        wanted = {name: [] for name in names}
        for sid, (name, row) in index.items():
            if name in wanted:
                wanted[name].append((row, sid))

        def parts(wanted: dict[str, list[tuple[int, str]]] = wanted):
            for name, rows in wanted.items():
                rows.sort()
                idx = [r for r, _ in rows]
                with h5py.File(folder / name, "r") as f:
                    yield (
                        [sid for _, sid in rows],
                        torch.from_numpy(f["maps"][idx]),
                        torch.from_numpy(f["targets"][idx]),
                        torch.from_numpy(f["logits"][idx]),
                    )

        total = sum(len(rows) for rows in wanted.values())
        needed = sum((folder / name).stat().st_size for name in names)
        free = shutil.disk_usage(folder).free
        if free < 2 * needed:
            log.warning(
                "not compacting %s: %.1f MiB free, %.1f MiB needed; the chunks stay as they are",
                folder,
                free / 2**20,
                2 * needed / 2**20,
            )
            continue
        new = f"chunk-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.h5"
        new = write_chunk(
            folder,
            new,
            parts(),
            map_dtype=getattr(torch, map_dtype),
            logits_dtype=getattr(torch, logits_dtype),
            n=total,
            config_hash=config_hash,
            level=level,
            fsync=fsync,
            in_memory=False,
        )
        row = 0
        for rows in wanted.values():
            for _, sid in rows:
                index[sid] = (new, row)
                row += 1
        for name in names:
            (folder / name).unlink(missing_ok=True)
        log.info("compacted %d chunks of %s into %s (%d samples)", len(names), folder, new, total)
