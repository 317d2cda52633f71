"""Small I/O helpers every layer uses: atomic writes, CSV rows, SHA-256 of files, library versions, devices.

Each exists once here (they used to be repeated in the loop, the cache, the probe, tracking and the bench).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: the libraries whose versions determine a run's numbers (recorded with every run and MLflow job)
VERSIONED = ("xaibench", "torch", "timm", "transformers", "hydra-core", "numpy", "scikit-learn", "mlflow")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Nothing is left under the final name when the write fails (e.g. a full disk): the temporary file is
    removed and the error re-raised with the folder named.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path.parent, len(text.encode())) from None


def atomic_write_texts(folder: str | Path, files: Sequence[tuple[str, str | bytes]]) -> None:
    """Write several files of one record all or nothing: every text goes to a temporary file first (each
    fsynced); only when all are written are they renamed, in order (so the last one can mark completion).
    On a failure the temporary files are removed and the error names the folder and the space needed."""
    folder = Path(folder)
    tmps: list[tuple[Path, Path]] = []
    try:
        for name, text in files:
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmps.append((tmp, folder / name))
            data = text.encode("utf-8") if isinstance(text, str) else text
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
        needed = sum(len(t.encode("utf-8") if isinstance(t, str) else t) for _, t in files)
        raise write_error(exc, folder, needed) from None
    for tmp, final in tmps:
        os.replace(tmp, final)


def write_error(exc: OSError, folder: Path, needed: int | None = None) -> OSError:
    """An ``OSError`` whose one-line message names the folder and, for a full disk, the space involved."""
    import errno
    import shutil

    if exc.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        need = f"needed about {needed / 2**20:.1f} MiB, " if needed else ""
        have = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        return OSError(exc.errno, f"no space left on the device of {folder} ({need}{have}); free space and re-run")
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return OSError(exc.errno, f"cannot write to {folder}: {exc.strerror} (choose a writable folder)")
    return OSError(exc.errno, f"cannot write to {folder}: {exc.strerror or exc}")


def make_dir(folder: str | Path) -> Path:
    """``mkdir -p`` whose error names the folder in one line (read-only or full file system)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, folder.parent if not folder.exists() else folder) from None
    return folder


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def rows_to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text of ``rows``; columns in order of first appearance unless given (missing cells empty).

    Floats are written with ``repr`` so they read back bit-identical.
    """
    rows = list(rows)
    if columns is None:
        found: list[str] = []
        for row in rows:
            found.extend(k for k in row if k not in found)
        columns = found
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _cell(row.get(k))) for k in columns})
    return buf.getvalue()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Lower-case hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def library_versions(packages: Sequence[str] = VERSIONED) -> dict[str, str]:
    """Installed versions of ``packages`` (``"absent"`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a clear error for anything else."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device=cpu or device=auto")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for NumPy scalars and tensors."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dump_json(obj: Any) -> str:
    """Stable, indented JSON (sorted keys) as every record file is written."""
    return json.dumps(obj, indent=2, sort_keys=True, default=json_default)


def parse_devices(spec: str) -> list[torch.device]:
    """The devices of a comma list (``cpu,cuda``); CUDA ones are left out, with a log line, without CUDA."""
    out = []
    for name in (d for d in spec.split(",") if d):
        if name.startswith("cuda") and not torch.cuda.is_available():
            logging.getLogger(__name__).info("no CUDA device: skipping %s", name)
            continue
        out.append(torch.device(name))
    return out


def device_label(device: torch.device) -> str:
    """``cpu-<n>cores`` or ``cuda-<device name>``: how results files name the machine."""
    if device.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(device).replace(" ", "_")
    return f"cpu-{os.cpu_count()}cores"
