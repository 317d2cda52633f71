"""ERASER documents are tokenised as the official loader does (issue 19, item 12): lines split on ``' '``
only, so a tab, a no-break space or (in ``docs.jsonl``) a double space keeps the evidence spans on the
official token indices instead of shifting them, and such a document is warned about.

The official reader (``rationale_benchmark/utils.py``): ``docs/<docid>`` is read line by line, each line
stripped, empty lines dropped, then ``line.split(' ')`` with empty tokens dropped; ``docs.jsonl`` documents
are ``split('\\n')``, each line stripped and ``split(' ')`` with empty tokens *kept*. The expected tokens
below are those rules applied by hand.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from xaibench.datasets.eraser import EraserMovies

# a review whose spaces are not all ' ': a tab inside line 1, a no-break space and a double space in line 2
DOC = "the film\twas great .\n  really\u00a0good acting  here .\n\nbad ending\n"
OFFICIAL_DOCS_DIR = ["the", "film\twas", "great", ".", "really\u00a0good", "acting", "here", ".", "bad", "ending"]
# docs.jsonl: split('\n'), strip, split(' ') keeping empty tokens (the double space, the empty lines)
OFFICIAL_DOCS_JSONL = [
    *["the", "film\twas", "great", "."],
    *["really\u00a0good", "acting", "", "here", "."],
    "",
    *["bad", "ending"],
    "",
]


def evidence(docid: str, tokens: list[str], start: int, end: int) -> dict:
    """An ERASER evidence over the official token indices, with its text as ERASER writes it."""
    return {"docid": docid, "start_token": start, "end_token": end, "text": " ".join(tokens[start:end])}


def write(root: Path, tokens: list[str], jsonl: bool) -> list[tuple[int, int]]:
    spans = [(5, 7), (8, 10)] if not jsonl else [(5, 8), (10, 12)]  # "acting here", "bad ending"
    ann = {
        "annotation_id": "r1.txt",
        "classification": "POS",
        "evidences": [[evidence("r1.txt", tokens, a, b)] for a, b in spans],
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.jsonl").write_text(json.dumps(ann) + "\n")
    if jsonl:
        (root / "docs.jsonl").write_text(json.dumps({"docid": "r1.txt", "document": DOC}) + "\n")
    else:
        (root / "docs").mkdir()
        (root / "docs" / "r1.txt").write_text(DOC, encoding="utf-8")
    return spans


def test_docs_folder_is_split_on_spaces_only(tmp_path: Path, caplog) -> None:
    spans = write(tmp_path, OFFICIAL_DOCS_DIR, jsonl=False)
    assert len(DOC.split()) == 12 != len(OFFICIAL_DOCS_DIR)  # str.split() would shift every later span
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        sample = EraserMovies(tmp_path)[0]
    assert list(sample.words) == OFFICIAL_DOCS_DIR
    assert sample.rationale == tuple(spans)
    ann = json.loads((tmp_path / "test.jsonl").read_text())
    for group in ann["evidences"]:
        ev = group[0]
        assert " ".join(sample.words[ev["start_token"] : ev["end_token"]]) == ev["text"]
    assert [sample.words[t] for a, b in spans for t in range(a, b)] == ["acting", "here", "bad", "ending"]
    warned = [r.getMessage() for r in caplog.records if "r1.txt" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "1 of 1 documents" in warned[0] and "tab" in warned[0] and "no-break space" in warned[0], warned


def test_docs_jsonl_keeps_the_official_empty_tokens(tmp_path: Path, caplog) -> None:
    spans = write(tmp_path, OFFICIAL_DOCS_JSONL, jsonl=True)
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        sample = EraserMovies(tmp_path)[0]
    assert list(sample.words) == OFFICIAL_DOCS_JSONL
    assert [sample.words[t] for a, b in spans for t in range(a, b)] == ["acting", "", "here", "bad", "ending"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "empty tokens" in warned and "tab" in warned, warned


def test_plain_documents_are_not_warned_about(tmp_path: Path, caplog) -> None:
    root = tmp_path / "m"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "r1.txt").write_text("a fine film .\r\nreally  good\n\n")  # CRLF, double space: harmless
    ann = {"annotation_id": "r1.txt", "classification": "POS", "evidences": [[evidence("r1.txt", [], 4, 6)]]}
    (root / "test.jsonl").write_text(json.dumps(ann) + "\n")
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        sample = EraserMovies(root)[0]
    assert sample.words == ("a", "fine", "film", ".", "really", "good")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
