"""Fingerprints of the files a job reads, so that a file changed in place is never served from old work.

Every string in a dataset or model config that names an existing file or folder is fingerprinted: a file
by its size and modification time (nanoseconds), plus the SHA-256 of its content when it is small (at
most :data:`HASH_LIMIT` bytes: annotation files, ERASER documents, vocabularies, configs, where an edit may
keep the size and land in the same clock tick); a folder by the same for every file below it (sorted
relative paths). The fingerprint goes into the attribution cache key and the finished-job index, so an
unchanged tree is still reused and a changed one is recomputed. Large files (weights, ``gtsegs_ijcv.mat``,
images) are trusted by size and mtime; the model's weights are additionally identified by the hash of the
loaded tensors (``ModelAdapter.weights_hash``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: files up to this size are identified by their content as well
HASH_LIMIT = 1 << 20
#: folders with more files than this are identified by their listing (names, sizes, mtimes) only
_FOLDER_HASH_FILES = 20000


def _strings(tree: Any) -> Iterable[str]:
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from _strings(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _strings(value)
    elif isinstance(tree, (str, os.PathLike)):
        yield str(tree)


def _file(path: Path, h: Any, with_content: bool) -> None:
    st = path.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    if with_content and st.st_size <= HASH_LIMIT:
        h.update(path.read_bytes())


def path_fingerprint(path: str | Path) -> str | None:
    """SHA-256 (first 16 hex digits) of a file's or folder's fingerprint; ``None`` if it does not exist."""
    p = Path(path).expanduser()
    h = hashlib.sha256()
    try:
        if p.is_file():
            _file(p, h, True)
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            content = len(files) <= _FOLDER_HASH_FILES
            for f in files:
                h.update(str(f.relative_to(p)).encode() + b"\0")
                _file(f, h, content)
        else:
            return None
    except OSError:
        return None
    return h.hexdigest()[:16]


def files_fingerprint(*trees: Any) -> dict[str, str]:
    """``{path: fingerprint}`` of every existing file or folder named in the config ``trees``."""
    out = {}
    for tree in trees:
        for text in _strings(tree):
            if not text or len(text) > 4096 or "\n" in text or text in out:
                continue
            if not (os.sep in text or text.startswith(("~", "."))):
                continue  # names and hub ids, not paths
            found = path_fingerprint(text)
            if found is not None:
                out[text] = found
    return out
