"""ERASER Movie Reviews (DeYoung et al., ACL 2020) in the official ERASER layout.

Layout (``movies.tar.gz`` from eraserbenchmark.com)::

    root/docs/<docid>            one review; sentences separated by newlines, tokens by spaces
    root/{train,val,test}.jsonl  one annotation per line: annotation_id, classification (NEG/POS),
                                 evidences = list of evidence groups, each a list of
                                 {docid, start_token, end_token (exclusive), start_sentence, ...}

``root/docs.jsonl`` (``{"docid", "document"}`` per line) is read instead when ``root/docs/`` is absent.
A sample's words are its document's tokens as ERASER's loader makes them (the token indices of the evidence
spans refer to these): ``docs/<docid>`` is read line by line, each line stripped, empty lines dropped and
the rest split on ``' '`` with empty tokens dropped; a ``docs.jsonl`` document is split on ``'\n'``, each
line stripped and split on ``' '`` with empty tokens *kept* (``rationale_benchmark/utils.py``
``load_documents`` / ``load_documents_from_file``). Other whitespace (a tab, a no-break space) therefore
stays inside a token, as in ERASER; ``str.split()`` would split there and shift every later evidence span.
Such documents are warned about at load. Its label is the class index, its rationale every evidence span of
every group (REFERENCE §6: ``Rationale.from_annotation`` → ``to_token_level``). Movie reviews have one
document per annotation.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xaibench.core.types import DatasetAdapter, RequiredAsset, Sample, path_asset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: names of whitespace characters without a Unicode name (control characters)
_CONTROL_NAMES = {
    "\t": "tab",
    "\r": "carriage return",
    "\x0b": "vertical tab",
    "\x0c": "form feed",
    "\x85": "next line",
}


def tokenize_document(text: str, docs_jsonl: bool = False) -> list[str]:
    """ERASER's tokens of a document (``rationale_benchmark/utils.py``): lines split on ``' '`` only.

    Args:
        text: the document (line breaks already universal, as ``open(...).readlines()`` reads them, for
            ``docs/<docid>`` files; the raw JSON string for ``docs.jsonl``).
        docs_jsonl: ``load_documents_from_file``'s rules (empty lines and the empty tokens of consecutive
            spaces are kept as tokens) instead of ``load_documents``' (both dropped).
    """
    lines = [line.strip() for line in text.split("\n")]
    if docs_jsonl:
        return [token for line in lines for token in line.split(" ")]
    return [token for line in lines if line for token in line.split(" ") if token]


def _odd_whitespace(words: Sequence[str]) -> set[str]:
    """Names of the whitespace characters other than ``' '`` inside ``words`` (plus ``"empty tokens"``)."""
    found = {c for w in words for c in w if c.isspace()}
    names = {_CONTROL_NAMES.get(c) or unicodedata.name(c, f"U+{ord(c):04X}").lower() for c in found}
    return names | ({"empty tokens"} if any(not w for w in words) else set())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, naming the line of a parse error."""
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


class EraserMovies(DatasetAdapter):
    """ERASER Movie Reviews (or any single-document ERASER classification task).

    Args:
        root: directory with ``docs/`` and ``{train,val,test}.jsonl``.
        split: ``train``, ``val`` or ``test`` (the reference evaluates ``test``).
        classes: class names in label order; the annotation's ``classification`` is looked up here
            (movies: ``NEG`` = 0, ``POS`` = 1).
        limit: keep only the first ``limit`` annotations (quick runs).

    Raises:
        FileNotFoundError: the split file or a referenced document is missing.
        ValueError: an unknown class, an evidence span outside its document, an annotation with evidence
            in several documents.
    """

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        root, split = config.get("root"), str(config.get("split", "test"))
        if root is None:
            return []
        hint = "fetch it with `make data` (or `xaibench-data eraser_movies`)"
        what = f"ERASER Movie Reviews ({split}.jsonl and docs/)"
        return path_asset(what, Path(str(root)) / f"{split}.jsonl", hint) or path_asset(
            what, Path(str(root)) / "docs", hint
        )

    modality = "text"
    provides = frozenset({"label", "rationale"})

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        classes: Sequence[str] = ("NEG", "POS"),
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.classes = tuple(classes)
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"classes must be distinct names, got {list(self.classes)}")
        path = self.root / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"ERASER split file {path} not found (expected the ERASER layout root/docs/<docid> and "
                "root/{train,val,test}.jsonl, e.g. the extracted movies.tar.gz from eraserbenchmark.com)"
            )
        annotations = read_jsonl(path)
        if limit is not None:
            annotations = annotations[: int(limit)]
        self._docs = self._doc_reader()
        self._samples = [self._parse(a, path, i) for i, a in enumerate(annotations)]
        odd = {}
        for sample in self._samples:
            names = _odd_whitespace(sample.words)
            if names:
                odd.setdefault(sample.id, names)
        if odd:
            first = list(odd.items())[:3]
            log.warning(
                "%s: %d of %d documents hold whitespace other than single spaces and line breaks (e.g. %s); "
                "they are tokenised as ERASER's loader does (lines split on ' ' only, so a tab or no-break space "
                "stays inside a token%s) and the evidence token indices refer to those tokens",
                path,
                len(odd),
                len(self._samples),
                "; ".join(f"{doc}: {', '.join(sorted(names))}" for doc, names in first),
                "; docs.jsonl keeps the empty tokens of consecutive spaces and empty lines" if self._docs else "",
            )
        empty = [s.id for s in self._samples if not s.rationale]
        if empty:
            log.warning(
                "%s: %d of %d annotations have empty evidence (e.g. %s): token-F1 counts their top-k words as "
                "false positives (as ERASER's scorer does) and token AUPRC leaves them out (ERASER's scorer gives "
                "them an AUPRC of 0.5: metrics.token_auprc.single_class_docs=eraser)",
                path,
                len(empty),
                len(self._samples),
                ", ".join(empty[:3]),
            )

    def _doc_reader(self) -> dict[str, list[str]] | None:
        """``None``: read ``docs/<docid>`` per document; else all of ``docs.jsonl``, split into words."""
        if (self.root / "docs").is_dir():
            return None
        flat = self.root / "docs.jsonl"
        if flat.is_file():
            return {str(r["docid"]): tokenize_document(str(r["document"]), docs_jsonl=True) for r in read_jsonl(flat)}
        raise FileNotFoundError(
            f"no documents under {self.root}: expected a docs/ directory (one file per docid) or docs.jsonl"
        )

    def _words(self, docid: str) -> list[str]:
        if self._docs is not None:
            if docid not in self._docs:
                raise FileNotFoundError(f"document {docid!r} is not in {self.root / 'docs.jsonl'}")
            return self._docs[docid]
        path = self.root / "docs" / docid
        if not path.is_file():
            raise FileNotFoundError(f"document {path} not found (referenced by {self.split}.jsonl)")
        try:
            return tokenize_document(path.read_text(encoding="utf-8"))  # universal newlines, as readlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def _parse(self, ann: dict[str, Any], path: Path, line: int) -> Sample:
        where = f"{path} annotation {line + 1}"
        try:
            ann_id = str(ann["annotation_id"])
            label_name = ann["classification"]
        except KeyError as exc:
            raise ValueError(f"{where}: missing field {exc.args[0]!r}") from None
        if label_name not in self.classes:
            raise ValueError(
                f"{where} ({ann_id}): unknown class {label_name!r}; supported classes are {list(self.classes)} "
                "(set `classes` to the task's label names)"
            )
        evidences = [ev for group in ann.get("evidences") or [] for ev in group]
        docids = {str(ev.get("docid", ann_id)) for ev in evidences}
        if len(docids) > 1:
            raise ValueError(
                f"{where} ({ann_id}): evidence in several documents {sorted(docids)}; only single-document "
                "tasks such as movie reviews are supported"
            )
        docid = docids.pop() if docids else str((ann.get("docids") or [ann_id])[0])
        words = self._words(docid)
        spans = []
        for ev in evidences:
            start, end = int(ev["start_token"]), int(ev["end_token"])
            if not 0 <= start < end <= len(words):
                raise ValueError(
                    f"{where} ({ann_id}): evidence span [{start}, {end}) is outside document {docid!r} of "
                    f"{len(words)} words (end_token is exclusive)"
                )
            spans.append((start, end))
        return Sample(
            id=ann_id,
            label=self.classes.index(label_name),
            words=tuple(words),
            rationale=tuple(spans),
        )

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index]

    @property
    def name(self) -> str:
        return f"eraser_{self.root.name}_{self.split}"

    def class_names(self) -> Sequence[str]:
        return self.classes
