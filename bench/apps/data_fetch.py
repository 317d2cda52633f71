"""``xaibench-data`` / ``make data``: fetch the benchmark's data and weights into the data folder.

The assets are listed as data in ``xaibench/data/assets.yaml`` (see :mod:`xaibench.core.data.assets`):
ImageNet-segmentation (``gtsegs_ijcv.mat``), ERASER Movie Reviews (``movies.tar.gz``, extracted to
``<data_dir>/movies``) and the timm ``vit_base_patch16_224.orig_in21k_ft_in1k`` weights (a safetensors file
for ``model.checkpoint_path``). ImageNet validation cannot be redistributed: asking for ``imagenet_val``
prints what to download and where to put it.

Guarantees:

* Downloads are resumable (``<file>.part`` + HTTP ``Range``; a server that ignores ``Range`` restarts the
  file cleanly), retried a bounded number of times with exponential backoff, and shown with tqdm.
* A file appears under its final name only complete and checked (:func:`os.replace` after the check);
  archives are extracted with member checks into a temporary folder that is then renamed into place.
* Checksums. When ``assets.yaml`` records a SHA-256 the download is verified against it. When it records
  ``sha256: null`` (no published checksum could be confirmed) the policy is **trust on first use**: the
  first complete download is *not verified* - its SHA-256 is computed, printed, written to
  ``<file>.sha256`` and a warning says so; every later run and re-download is checked against that pin
  (delete the ``.sha256`` file to accept a changed upstream file). A pin only detects later changes; it
  cannot tell whether the first download was the genuine file.

Exit status of :func:`main`: 0 success; 1 a download, checksum or extraction error; 2 a usage error
(unknown asset, bad asset list); 3 a manual asset (``imagenet_val``) is missing and its instructions were
printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xaibench.core.data.archive import UnsafeArchiveError, safe_extract
from xaibench.core.data.assets import Asset, default_data_dir, load_assets
from xaibench.core.data.download import (
    ChecksumError,
    DownloadError,
    download,
    read_sidecar,
    sha256_file,
    sidecar_path,
    sniff,
    write_sidecar,
)

log = logging.getLogger("xaibench.apps.data_fetch")  # not __name__: `python -m` makes that "__main__"

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MANUAL = 0, 1, 2, 3


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_asset` did.

    Attributes:
        name: the asset.
        path: the file (or, for archives, the extracted folder; for manual assets the expected folder).
        status: ``downloaded``, ``present`` (already there and checked), ``manual_present`` or
            ``manual_missing``.
        sha256: digest of the downloaded file (``None`` for manual assets).
        verified: True when the digest matched a checksum recorded in the asset list; False under trust on
            first use (a pin from an earlier run counts as a match but not as verification).
        pinned: True when this call wrote a first-use pin (``<file>.sha256``).
        message: instructions for a missing manual asset.
    """

    name: str
    path: Path
    status: str
    sha256: str | None = None
    verified: bool = False
    pinned: bool = False
    message: str | None = None


def mirror_url(asset: Asset, base_url: str) -> str:
    """URL of ``asset`` on a mirror: ``<base_url>/<file name>`` (e.g. ``.../gtsegs_ijcv.mat``)."""
    name = PurePosixPath(asset.file or "").name
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(name)}"


def manual_instructions(asset: Asset, data_dir: Path) -> str:
    """The manual asset's instructions with ``{root}``, ``{parent}`` and ``{data_dir}`` filled in."""
    root = data_dir / (asset.check_path or asset.name)
    text = asset.instructions or ""
    for key, value in (("{root}", root), ("{parent}", root.parent), ("{data_dir}", data_dir)):
        text = text.replace(key, str(value))
    return text.rstrip()


def _extracted(asset: Asset, data_dir: Path) -> bool:
    out = data_dir / (asset.extract_to or "")
    return out.is_dir() and all((out / e).exists() for e in asset.expect)


def fetch_asset(
    asset: Asset,
    data_dir: str | Path,
    *,
    base_url: str | None = None,
    force: bool = False,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> FetchResult:
    """Make one asset present under ``data_dir`` (download, check, extract), or report a manual one.

    An asset already present is not downloaded again, but its file is re-hashed and checked against the
    recorded checksum or the first-use pin; an archive whose folder is incomplete is extracted again.

    Args:
        asset: the asset (from :func:`xaibench.core.data.assets.load_assets`).
        data_dir: the data folder.
        base_url: fetch from ``<base_url>/<file name>`` instead of the asset's URL (a mirror).
        force: download again even if the file is present (a leftover ``.part`` is discarded); the new file
            replaces the old one only after it passed the checks.
        retries, backoff, timeout, progress: passed to :func:`xaibench.core.data.download.download`.

    Returns:
        A :class:`FetchResult`.

    Raises:
        DownloadError: the download failed (after the retries) or its content is not of the asset's format.
        ChecksumError: a download or a present file does not match the recorded or pinned SHA-256; no
            new file is left under the final name.
        UnsafeArchiveError: the archive holds members that would escape the target folder.
        ValueError: the archive lacks the expected entries.
    """
    data_dir = Path(data_dir)
    if asset.manual:
        root = data_dir / (asset.check_path or asset.name)
        if root.is_dir() and any(root.iterdir()):
            return FetchResult(asset.name, root, "manual_present")
        return FetchResult(asset.name, root, "manual_missing", message=manual_instructions(asset, data_dir))

    if asset.url is None or asset.file is None:  # load_assets guarantees both for a downloadable asset
        raise ValueError(f"asset {asset.name!r}: a downloadable asset needs url and file")
    target = data_dir / asset.file
    side = sidecar_path(target)
    pinned = read_sidecar(target)
    if asset.sha256 and pinned and pinned != asset.sha256:
        log.warning("%s: %s disagrees with the checksum in the asset list; the asset list wins", asset.name, side)
    expected = asset.sha256 or pinned
    source = "the asset list" if asset.sha256 else f"{side} (pinned on first use; delete it if the file changed)"

    if target.is_file() and not force:
        digest = sha256_file(target)
        if expected and digest != expected:
            raise ChecksumError(
                f"{asset.name}: {target} exists but its SHA-256 does not match: expected {expected} "
                f"(from {source}), got {digest}; delete it or re-run with --force"
            )
        reason = sniff(target, asset.format)
        if reason is not None:
            raise DownloadError(f"{asset.name}: {target} is not a {asset.format} file ({reason}); delete it")
        status = "present"
    else:
        if force:
            target.with_name(target.name + ".part").unlink(missing_ok=True)
        url = mirror_url(asset, base_url) if base_url else asset.url
        log.info("%s: downloading %s", asset.name, url)
        try:
            digest = download(
                url,
                target,
                sha256=expected,
                fmt=asset.format,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
                desc=asset.name,
            )
        except ChecksumError as exc:
            raise ChecksumError(f"{asset.name}: {exc} (expected value from {source})") from None
        status = "downloaded"

    wrote_pin = False
    if pinned != digest:
        write_sidecar(target, digest)
        wrote_pin = asset.sha256 is None
    if wrote_pin:
        log.warning(
            "%s: NOT VERIFIED: no published SHA-256 is recorded for %s; trusting it on first use. "
            "SHA-256 %s pinned in %s; later runs are checked against it",
            asset.name,
            target,
            digest,
            side,
        )

    path = target
    if asset.extract_to:
        path = data_dir / asset.extract_to
        if force or status == "downloaded" or not _extracted(asset, data_dir):
            safe_extract(target, path, expect=asset.expect)
    return FetchResult(asset.name, path, status, digest, verified=asset.sha256 is not None, pinned=wrote_pin)


def _print_list(assets: dict[str, Asset], data_dir: Path) -> None:
    print(f"data folder: {data_dir}")
    for a in assets.values():
        if a.manual:
            root = data_dir / (a.check_path or a.name)
            state = "present" if root.is_dir() and any(root.iterdir()) else "missing"
            print(f"  {a.name:<16} {state:<8} manual download (run `xaibench-data {a.name}` for instructions)")
            print(f"  {'':<16} {'':<8} {root}")
        else:
            target = data_dir / (a.file or "")
            state = "present" if target.is_file() and (not a.extract_to or _extracted(a, data_dir)) else "missing"
            if a.sha256:
                check = "sha256 recorded"
            elif read_sidecar(target):
                check = "sha256 pinned on first use"
            else:
                check = "no sha256 (trust on first use)"
            print(f"  {a.name:<16} {state:<8} {check}{'; optional: fetched only by name' if a.optional else ''}")
            print(f"  {'':<16} {'':<8} {data_dir / a.extract_to if a.extract_to else target}")
        if a.description:
            print(f"  {'':<16} {'':<8} {' '.join(a.description.split())}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-data",
        description=(
            "Fetch xaibench's data sets and weights into the data folder (resumable, checksummed, "
            "extracted safely). Without ASSET, every downloadable asset but the optional ones (other model families' weights) is fetched."
        ),
        epilog=(
            "Checksums: an asset whose SHA-256 is not recorded is trusted on first use (its SHA-256 is "
            "printed and pinned in <file>.sha256; later runs are checked against it). Exit status: 0 ok, "
            "1 download/checksum/extraction error, 2 usage error, 3 manual download needed."
        ),
    )
    parser.add_argument("assets", nargs="*", metavar="ASSET", help="assets to fetch (see --list)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data folder (default: $XAIBENCH_DATA, else $XAIBENCH_CACHE/data, else ~/.cache/xaibench/data)",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="mirror: fetch every asset from URL/<file name> instead of its own URL",
    )
    parser.add_argument("--list", action="store_true", help="list the assets, where they go and whether present")
    parser.add_argument("--force", action="store_true", help="download again even if already present")
    parser.add_argument(
        "--assets", dest="assets_file", type=Path, default=None, metavar="FILE", help="another asset list (YAML)"
    )
    parser.add_argument("--retries", type=int, default=5, help="retries per download (default: 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    return parser


def _fail(message: str) -> None:
    print(f"xaibench-data: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``xaibench-data``); returns the exit status (see the module docstring)."""
    args = _build_parser().parse_args(argv)
    if args.retries < 0:
        _fail(f"--retries must be >= 0, got {args.retries}")
        return EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xaibench-data: %(levelname)s: %(message)s"))
    loggers = [logging.getLogger("xaibench.core.data"), log]  # the download helpers' messages and this tool's
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING if args.quiet else logging.INFO)
        lg.propagate = False
    try:
        return _run(args)
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def _run(args: argparse.Namespace) -> int:
    try:
        assets = load_assets(args.assets_file)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
        return EXIT_USAGE
    data_dir: Path = (args.data_dir or default_data_dir()).expanduser()
    if args.list:
        _print_list(assets, data_dir)
        return EXIT_OK

    unknown = [n for n in args.assets if n not in assets]
    if unknown:
        _fail(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(assets)}")
        return EXIT_USAGE
    names = list(dict.fromkeys(args.assets)) or [n for n, a in assets.items() if not a.manual and not a.optional]

    failed = manual_missing = 0
    for name in names:
        try:
            result = fetch_asset(
                assets[name],
                data_dir,
                base_url=args.base_url,
                force=args.force,
                retries=args.retries,
                progress=not args.quiet,
            )
        except KeyboardInterrupt:
            _fail(f"{name}: interrupted; a partial download is kept as .part and resumes on the next run")
            return 130
        except (DownloadError, ChecksumError, UnsafeArchiveError, ValueError, OSError) as exc:
            _fail(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
            failed += 1
            continue
        if result.status == "manual_missing":
            manual_missing += 1
            print(f"{name}: not found at {result.path}\n\n{result.message}\n")
        elif result.status == "manual_present":
            print(f"{name}: present at {result.path} (not validated here; the dataset adapter checks it)")
        else:
            check = (
                "verified"
                if result.verified
                else "NOT verified (trust on first use" + (", pinned now)" if result.pinned else ", matches the pin)")
            )
            print(f"{name}: {result.status} {result.path}\n  sha256 {result.sha256} {check}")
    if not args.assets:
        for name, a in assets.items():
            if a.manual:
                print(f"{name}: not downloadable; `xaibench-data {name}` prints how to get it")
    if failed:
        return EXIT_ERROR
    return EXIT_MANUAL if manual_missing else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
