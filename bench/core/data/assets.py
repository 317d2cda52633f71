"""The asset list of ``xaibench-data``: what to fetch, from where, into which file, with which checksum.

The list is data (``assets.yaml`` beside this module, shipped as package data); :func:`load_assets` reads
and validates it so a typo fails with a message naming the asset and the field, not deep in a download.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

#: formats :func:`xaibench.core.data.download.sniff` can check
FORMATS = ("mat", "safetensors", "tar", "zip")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_FIELDS = {
    "description",
    "url",
    "file",
    "sha256",
    "format",
    "extract_to",
    "expect",
    "check_path",
    "instructions",
    "optional",
}


@dataclass(frozen=True)
class Asset:
    """One entry of the asset list.

    Attributes:
        name: key used on the command line (``xaibench-data imagenet_seg``).
        description: one line for ``--list``.
        url: where the file comes from; ``None`` for a manual asset (see ``instructions``).
        file: path of the downloaded file, relative to the data folder.
        sha256: expected SHA-256 (lower-case hex) or ``None`` when unknown (trust on first use).
        format: cheap content check applied before a download is accepted (``mat``, ``safetensors``,
            ``tar``, ``zip``) or ``None``.
        extract_to: for archives, the folder (relative to the data folder) the archive becomes.
        expect: entries that folder must contain after extraction (also used to find the archive's root).
        check_path: for manual assets, the folder whose presence means "already done".
        instructions: for manual assets, what to download and where to put it; ``{root}``, ``{parent}``
            and ``{data_dir}`` are filled in.
        optional: fetched only when named (``xaibench-data deit_base``), not by ``make data``: e.g. the
            weights of the other ViT families, which the CVPR 2021 tables do not need.
    """

    name: str
    description: str = ""
    url: str | None = None
    file: str | None = None
    sha256: str | None = None
    format: str | None = None
    extract_to: str | None = None
    expect: tuple[str, ...] = ()
    check_path: str | None = None
    instructions: str | None = None
    optional: bool = False

    @property
    def manual(self) -> bool:
        """True when the asset cannot be downloaded (no ``url``) and the user must provide it."""
        return self.url is None


def default_data_dir() -> Path:
    """``$XAIBENCH_DATA``, else ``$XAIBENCH_CACHE/data``, else ``~/.cache/xaibench/data``.

    The same rule as ``conf/paths/default.yaml`` (``${paths.data_dir}``), so fetched files are where the
    Hydra configs look for them.
    """
    if os.environ.get("XAIBENCH_DATA"):
        return Path(os.environ["XAIBENCH_DATA"]).expanduser()
    cache = os.environ.get("XAIBENCH_CACHE") or str(Path(os.environ.get("HOME", ".")) / ".cache" / "xaibench")
    return Path(cache).expanduser() / "data"


def _relative_path(name: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"asset {name!r}: {key} must be a non-empty relative path, got {value!r}")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"asset {name!r}: {key} must be a relative path inside the data folder, got {value!r}")
    return value


def _parse_asset(name: str, spec: Any) -> Asset:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"asset name {name!r}: expected lower-case letters, digits, '_', '.', '-'")
    if not isinstance(spec, dict):
        raise ValueError(f"asset {name!r}: expected a mapping of fields, got {type(spec).__name__}")
    unknown = set(spec) - _FIELDS
    if unknown:
        raise ValueError(f"asset {name!r}: unknown field(s) {sorted(unknown)}; supported: {sorted(_FIELDS)}")
    url = spec.get("url")
    sha = spec.get("sha256")
    fmt = spec.get("format")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha.lower())):
        raise ValueError(f"asset {name!r}: sha256 must be 64 hex digits or null, got {sha!r}")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"asset {name!r}: format {fmt!r} is not one of {FORMATS}")
    expect = spec.get("expect") or []
    if not isinstance(expect, list) or not all(isinstance(e, str) for e in expect):
        raise ValueError(f"asset {name!r}: expect must be a list of names")
    if url is None:
        if not spec.get("instructions"):
            raise ValueError(f"asset {name!r}: a manual asset (no url) needs instructions")
        return Asset(
            name=name,
            description=str(spec.get("description", "")),
            check_path=_relative_path(name, "check_path", spec["check_path"]) if spec.get("check_path") else None,
            instructions=str(spec["instructions"]),
        )
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"asset {name!r}: url must be an http(s) URL, got {url!r}")
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise ValueError(f"asset {name!r}: optional must be true or false, got {optional!r}")
    extract_to = spec.get("extract_to")
    if extract_to is not None and fmt not in ("tar", "zip"):
        raise ValueError(f"asset {name!r}: extract_to needs format tar or zip")
    return Asset(
        name=name,
        description=str(spec.get("description", "")),
        url=url,
        file=_relative_path(name, "file", spec.get("file")),
        sha256=sha.lower() if sha else None,
        format=fmt,
        extract_to=_relative_path(name, "extract_to", extract_to) if extract_to is not None else None,
        expect=tuple(expect),
        optional=optional,
    )


def load_assets(path: str | Path | None = None) -> dict[str, Asset]:
    """Read and validate an asset list.

    Args:
        path: a YAML file with a top-level ``assets:`` mapping; ``None`` reads the packaged
            ``xaibench/data/assets.yaml``.

    Returns:
        The assets by name, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid YAML or an entry is malformed (the message names the asset).
    """
    if path is None:
        text = resources.files("xaibench.core.data").joinpath("assets.yaml").read_text(encoding="utf-8")
        source = "xaibench/data/assets.yaml"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"asset list {path} not found")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("assets"), dict):
        raise ValueError(f"{source}: expected a top-level 'assets:' mapping")
    return {name: _parse_asset(name, spec) for name, spec in doc["assets"].items()}
