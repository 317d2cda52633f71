"""HDF5 cache of attribution maps that survives a killed run.

A run computes each sample's map once; a re-run (after a crash, a SIGKILL from a scheduler, or for another
metric such as the other perturbation direction) reads it back. The cache is keyed by the identifying
configuration (model, method and its parameters, target mode, precision, ...) and the sample id.

**Layout and kill-safety.** A cache is a directory::

    <path>/key.json                      the identifying config and its SHA-256 (written once, atomically)
    <path>/chunk-<time>-<pid>-<rand>-<sha32>.h5  immutable HDF5 files, each a complete set of samples,
                                               named with the SHA-256 of their bytes (checked before h5py
                                               reads them: corrupt HDF5 can hang the library)
    <path>/.<chunk>.h5.tmp               a chunk being written (a killed writer leaves one behind)

HDF5 itself is not crash-safe: a process killed while it appends to an open file can leave the
superblock or B-trees half-written and the *whole* file unreadable, flush or not. So no file is ever
modified in place. ``put`` buffers samples in memory; a flush (every ``chunk_size`` samples, every
``flush_every_s`` seconds, after the first ``put``, on ``flush()``/``close()``) writes a new chunk to a temporary name, sets its
``complete`` attribute last, closes and fsyncs it, and only then renames it (``os.replace``, atomic on
POSIX) to its final ``chunk-*.h5`` name. A kill at any moment therefore leaves either the complete chunk
or an ignored ``.tmp`` file; at most the unflushed buffer is lost and recomputed on resume. On open every
chunk is validated (readable, ``complete``, same config hash, consistent lengths); one that is not (a
disk error, a file copied in half) is renamed ``*.corrupt`` and its samples are recomputed. Several
writers (ranks) may share one cache: chunk names are unique, and duplicate ids are read once.
:meth:`AttributionCache.compact` merges the chunks into one file (streamed through resizable datasets)
with the same write-then-rename rule.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import h5py
import torch

from xaibench.core.cache_chunks import FORMAT, VERSION, _fsync_dir, validate_chunk, write_chunk
from xaibench.core.keys import key_diff, key_hash, stable_json
from xaibench.core.types import Attribution

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
_CHUNK_GLOB = "chunk-*.h5"
_STALE_TMP_S = 3600.0


class CacheKeyMismatch(ValueError):
    """The cache on disk was written for a different configuration."""


class CachedAttribution(NamedTuple):
    """One sample read back: ``map`` (``[gh, gw]``, ``[T]`` or ``[H, W]``), ``target``, ``logits`` ``[C]``."""

    map: torch.Tensor
    target: int
    logits: torch.Tensor


class AttributionCache:
    """Attribution maps of one (model, method, target mode, ...) configuration, by sample id.

    Args:
        path: the cache directory (created if absent). :meth:`path_for` derives a readable one.
        key: the identifying configuration, e.g. ``{"model": name, "weights": hash, "method": {...params},
            "target": "predicted", "precision": "float32"}``; JSON-like values. Its SHA-256 is stored in
            ``key.json`` and as the ``config_hash`` attribute of every chunk.
        on_mismatch: when ``path`` holds a cache of another configuration: ``"error"`` raises
            :class:`CacheKeyMismatch` naming the differing fields; ``"new"`` moves the old cache aside
            (``<path>.stale-<hash8>``, never deleted) and starts an empty one.
        chunk_size: samples buffered before a chunk file is written.
        flush_every_s: also write the buffer once it is this old (bounds the work a kill can lose); the
            first ``put`` is written at once.
        fsync: ``fsync`` chunks before renaming them (survives power loss, not just a killed process).
        readonly: open an existing cache for reading only (no directory is created, nothing renamed).

    Raises:
        CacheKeyMismatch: the stored hash differs and ``on_mismatch="error"``.
        FileNotFoundError: ``readonly`` and no cache at ``path``.
        ValueError: ``path`` exists but is not an attribution cache.
    """

    def __init__(
        self,
        path: str | Path,
        key: Mapping[str, Any],
        *,
        on_mismatch: Literal["error", "new"] = "error",
        chunk_size: int = 256,
        flush_every_s: float = 60.0,
        fsync: bool = True,
        readonly: bool = False,
    ) -> None:
        if on_mismatch not in ("error", "new"):
            raise ValueError(f"on_mismatch must be 'error' or 'new'; got {on_mismatch!r}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.path = Path(path).expanduser()
        self.key = json.loads(stable_json(key))
        self.hash = key_hash(key)
        self.chunk_size = int(chunk_size)
        self.flush_every_s = float(flush_every_s)
        self.fsync = bool(fsync)
        self.readonly = bool(readonly)
        self.level: str | None = None
        # id -> (chunk file name, row)
        self._index: dict[str, tuple[str, int]] = {}
        self._buffer: dict[str, CachedAttribution] = {}
        self._buffer_since: float | None = None
        self._wrote = False
        self._open(on_mismatch)

    # -- opening --------------------------------------------------------------------------------
    @staticmethod
    def path_for(root: str | Path, key: Mapping[str, Any]) -> Path:
        """``<root>/<model>/<method>/<target>-<hash8>``: one directory per configuration, readable names."""

        def part(name: str) -> str:
            value = key.get(name, "")
            if isinstance(value, Mapping):
                value = value.get("name", value.get("_target_", ""))
            text = str(value).rsplit(".", 1)[-1] if name == "method" else str(value)
            return "".join(c if c.isalnum() or c in "._-" else "_" for c in text) or "_"

        return Path(root) / part("model") / part("method") / f"{part('target')}-{key_hash(key)[:8]}"

    def _open(self, on_mismatch: str) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"attribution cache path {self.path} is a file; expected a cache directory")
        key_file = self.path / KEY_FILE
        if not key_file.is_file():
            if self.readonly:
                raise FileNotFoundError(f"no attribution cache at {self.path} (no {KEY_FILE})")
            if self.path.is_dir() and any(p.name != ".DS_Store" for p in self.path.iterdir()):
                raise ValueError(
                    f"{self.path} exists and is not an attribution cache (no {KEY_FILE}); choose an empty or new "
                    "directory"
                )
            self._create()
            return
        stored = self._read_key_file(key_file)
        if stored["hash"] != self.hash:
            changes = key_diff(stored.get("key"), self.key)
            detail = "; ".join(changes[:10]) or "key contents differ"
            if on_mismatch == "error" or self.readonly:
                raise CacheKeyMismatch(
                    f"attribution cache {self.path} was written for another configuration ({detail}); stored "
                    f"hash {stored['hash'][:12]}, requested {self.hash[:12]}. Use another cache path, delete it, "
                    "or open it with on_mismatch='new' to move it aside."
                )
            aside = self._aside_name(stored["hash"])
            os.replace(self.path, aside)
            log.warning(
                "attribution cache %s was for another configuration (%s); moved to %s", self.path, detail, aside
            )
            self._create()
            return
        self._load_chunks()

    def _aside_name(self, old_hash: str) -> Path:
        base = self.path.with_name(f"{self.path.name}.stale-{old_hash[:8]}")
        candidate, i = base, 1
        while candidate.exists():
            candidate, i = base.with_name(f"{base.name}-{i}"), i + 1
        return candidate

    def _read_key_file(self, key_file: Path) -> dict[str, Any]:
        try:
            stored = json.loads(key_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {key_file}: {exc}") from None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT or "hash" not in stored:
            raise ValueError(f"{key_file} is not an xaibench attribution-cache key file")
        if stored.get("version") != VERSION:
            raise ValueError(
                f"{key_file} has cache format version {stored.get('version')}; this xaibench reads {VERSION}"
            )
        return stored

    def _create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        content = json.dumps(
            {"format": FORMAT, "version": VERSION, "hash": self.hash, "key": self.key}, indent=1, sort_keys=True
        )
        tmp = self.path / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(content)
        os.replace(tmp, self.path / KEY_FILE)
        # another process may have created the same cache concurrently: what is there now must be ours
        stored = self._read_key_file(self.path / KEY_FILE)
        if stored["hash"] != self.hash:
            raise CacheKeyMismatch(f"{self.path} was created concurrently for another configuration")
        _fsync_dir(self.path)

    def _load_chunks(self) -> None:
        self._sweep_tmp()
        duplicates = 0
        for chunk in sorted(self.path.glob(_CHUNK_GLOB)):
            try:
                ids, level = validate_chunk(chunk, self.hash)
            except Exception as exc:  # h5py raises OSError/KeyError/...; any failure means unusable
                log.warning("attribution cache chunk %s is unusable (%s); its samples will be recomputed", chunk, exc)
                if not self.readonly:
                    try:
                        os.replace(chunk, chunk.with_name(chunk.name + ".corrupt"))
                    except OSError as move:  # a read-only folder: the chunk is ignored where it is
                        log.warning("could not move %s aside (%s); it is ignored", chunk, move.strerror or move)
                continue
            if self.level is None:
                self.level = level
            elif level != self.level:
                log.warning("chunk %s has level %r, the cache %r; ignored", chunk, level, self.level)
                continue
            for row, sid in enumerate(ids):
                if sid in self._index:
                    duplicates += 1
                else:
                    self._index[sid] = (chunk.name, row)
        if duplicates:
            log.debug("%d duplicate ids across chunks of %s (read once)", duplicates, self.path)
        log.info("attribution cache %s: %d samples", self.path, len(self._index))

    def _sweep_tmp(self) -> None:
        if self.readonly:
            return
        now = time.time()
        for tmp in self.path.glob(".chunk-*.tmp"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:  # younger ones may belong to a live writer
                    tmp.unlink()
            except OSError:
                pass

    # -- reading --------------------------------------------------------------------------------
    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index or sample_id in self._buffer

    def __len__(self) -> int:
        return len(self._index) + len(self._buffer)

    def ids(self) -> list[str]:
        """All cached sample ids (flushed and buffered)."""
        return list(self._index) + list(self._buffer)

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids not in the cache, in the given order."""
        return [i for i in ids if i not in self]

    def get(self, ids: Iterable[str]) -> dict[str, CachedAttribution]:
        """Cached entries of those ``ids`` that are present (absent ids are left out).

        Returns:
            ``{id: (map, target, logits)}`` with tensors in the dtype they were stored in.
        """
        out: dict[str, CachedAttribution] = {}
        by_chunk: dict[str, list[tuple[int, str]]] = {}
        for sid in ids:
            if sid in self._buffer:
                out[sid] = self._buffer[sid]
            elif sid in self._index:
                name, row = self._index[sid]
                by_chunk.setdefault(name, []).append((row, sid))
        for name, rows in by_chunk.items():
            with h5py.File(self.path / name, "r") as f:
                map_dtype = getattr(torch, str(f.attrs["map_dtype"]))
                logits_dtype = getattr(torch, str(f.attrs["logits_dtype"]))
                for row, sid in sorted(rows):
                    out[sid] = CachedAttribution(
                        map=torch.from_numpy(f["maps"][row]).to(map_dtype),
                        target=int(f["targets"][row]),
                        logits=torch.from_numpy(f["logits"][row]).to(logits_dtype),
                    )
        return out

    def get_batch(self, ids: Sequence[str]) -> Attribution | None:
        """The whole batch as an :class:`Attribution` when every id is cached, else ``None``."""
        if not ids or any(i not in self for i in ids):
            return None
        entries = self.get(ids)
        shapes = {tuple(entries[i].map.shape) for i in ids}
        if len(shapes) != 1:
            raise ValueError(f"cached maps of this batch have different shapes {sorted(shapes)}; read them with get()")
        return Attribution(
            maps=torch.stack([entries[i].map for i in ids]),
            targets=torch.tensor([entries[i].target for i in ids], dtype=torch.int64),
            logits=torch.stack([entries[i].logits for i in ids]),
            level=self.level or "tokens",
        )

    # -- writing --------------------------------------------------------------------------------
    def put(self, ids: Sequence[str], attribution: Attribution) -> int:
        """Add a batch's maps; ids already cached are skipped. Returns how many were added.

        Args:
            ids: ``B`` sample ids (``batch.ids``).
            attribution: ``maps`` ``[B, ...]``, ``targets`` ``[B]``, ``logits`` ``[B, C]``.
        """
        if self.readonly:
            raise RuntimeError(f"attribution cache {self.path} was opened read-only")
        ids = [str(i) for i in ids]
        n = len(ids)
        if len(set(ids)) != n:
            raise ValueError("duplicate sample ids in one put()")
        if attribution.maps.shape[0] != n or attribution.targets.shape[:1] != (n,) or attribution.logits.shape[0] != n:
            raise ValueError(
                f"{n} ids but maps {tuple(attribution.maps.shape)}, targets {tuple(attribution.targets.shape)}, "
                f"logits {tuple(attribution.logits.shape)}"
            )
        if self.level is None:
            self.level = attribution.level
        elif attribution.level != self.level:
            raise ValueError(f"this cache holds {self.level!r}-level maps; got {attribution.level!r}")
        maps = attribution.maps.detach().to("cpu")
        targets = attribution.targets.detach().to("cpu", torch.int64)
        logits = attribution.logits.detach().to("cpu")
        added = 0
        for b, sid in enumerate(ids):
            if sid in self:
                continue
            if self._buffer:
                first = next(iter(self._buffer.values()))
                if (
                    first.map.shape != maps[b].shape
                    or first.map.dtype != maps.dtype
                    or first.logits.shape != logits[b].shape
                ):
                    self.flush()  # a chunk holds one map shape and dtype
            self._buffer[sid] = CachedAttribution(maps[b].clone(), int(targets[b]), logits[b].clone())
            self._buffer_since = self._buffer_since or time.monotonic()
            added += 1
        first = self._buffer and not self._wrote  # the first batch is written at once: an unwritable cache
        # fails before minutes of work, and a job killed early keeps what it did
        if (
            first
            or len(self._buffer) >= self.chunk_size
            or (self._buffer and time.monotonic() - (self._buffer_since or 0.0) >= self.flush_every_s)
        ):
            self.flush()
        return added

    def flush(self) -> None:
        """Write the buffered samples as a new chunk (atomically; see the module docstring)."""
        if not self._buffer:
            return
        entries = self._buffer
        name = f"chunk-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.h5"
        ids = list(entries)
        maps = torch.stack([entries[i].map for i in ids])
        logits = torch.stack([entries[i].logits for i in ids])
        targets = torch.tensor([entries[i].target for i in ids], dtype=torch.int64)
        name = write_chunk(
            self.path,
            name,
            [(ids, maps, targets, logits)],
            map_dtype=maps.dtype,
            logits_dtype=logits.dtype,
            n=len(ids),
            config_hash=self.hash,
            level=self.level or "tokens",
            fsync=self.fsync,
        )
        for row, sid in enumerate(ids):
            self._index[sid] = (name, row)
        self._buffer = {}
        self._buffer_since = None
        self._wrote = True

    def compact(self) -> None:
        """Merge all chunks into one file per map shape/dtype (see :func:`xaibench.core.cache_chunks.compact`)."""
        from xaibench.core.cache_chunks import compact

        self.flush()
        compact(self.path, self._index, config_hash=self.hash, level=self.level or "tokens", fsync=self.fsync)

    def close(self) -> None:
        """Write what is buffered."""
        if not self.readonly:
            self.flush()

    def __enter__(self) -> AttributionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AttributionCache({str(self.path)!r}, hash={self.hash[:12]}, n={len(self)})"
