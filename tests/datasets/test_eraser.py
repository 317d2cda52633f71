"""ERASER-format reader and the synthetic text dataset."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from helpers import ROOT
from xaibench.datasets.eraser import EraserMovies
from xaibench.datasets.synthetic_text import NEGATIVE, POSITIVE, SyntheticText, vocabulary


def write_split(root, annotations, docs):
    (root / "docs").mkdir(parents=True, exist_ok=True)
    for docid, text in docs.items():
        (root / "docs" / docid).write_text(text)
    (root / "test.jsonl").write_text("".join(json.dumps(a) + "\n" for a in annotations))
    return root


def annotation(ann_id="d1.txt", cls="POS", spans=((0, 2),), docid=None):
    return {
        "annotation_id": ann_id,
        "classification": cls,
        "evidences": [[{"docid": docid or ann_id, "start_token": s, "end_token": e}] for s, e in spans],
        "query": "What is the sentiment of this review?",
        "query_type": None,
    }


def test_reads_the_official_layout(tmp_path):
    docs = {"d1.txt": "a great film .\nreally great\n", "d2.txt": "bad  plot\n\tslow"}
    write_split(
        tmp_path,
        [annotation("d1.txt", "POS", [(1, 3), (4, 6)]), annotation("d2.txt", "NEG", [(0, 1)])],
        docs,
    )
    data = EraserMovies(tmp_path, split="test")
    assert len(data) == 2 and data.modality == "text" and data.provides == {"label", "rationale"}
    first, second = data[0], data[1]
    assert first.id == "d1.txt" and first.label == 1
    assert first.words == ("a", "great", "film", ".", "really", "great")
    assert first.rationale == ((1, 3), (4, 6))
    assert second.words == ("bad", "plot", "slow") and second.label == 0
    assert data.class_names() == ("NEG", "POS")
    assert len(EraserMovies(tmp_path, split="test", limit=1)) == 1


def test_custom_classes(tmp_path):
    write_split(tmp_path, [annotation(cls="True")], {"d1.txt": "x y z"})
    assert EraserMovies(tmp_path, classes=["False", "True"])[0].label == 1


def test_docs_jsonl_fallback(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps(annotation()) + "\n")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"docid": "d1.txt", "document": "one two\nthree"}) + "\n")
    assert EraserMovies(tmp_path)[0].words == ("one", "two", "three")


def test_errors_name_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        EraserMovies(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        EraserMovies(tmp_path, split="dev")
    write_split(tmp_path, [annotation()], {})
    with pytest.raises(FileNotFoundError, match="d1.txt"):
        EraserMovies(tmp_path)
    write_split(tmp_path, [annotation(spans=[(1, 9)])], {"d1.txt": "only three words"})
    with pytest.raises(ValueError, match=r"\[1, 9\) is outside document 'd1.txt' of 3 words"):
        EraserMovies(tmp_path)
    write_split(tmp_path, [annotation(cls="NEUTRAL")], {"d1.txt": "only three words"})
    with pytest.raises(ValueError, match=r"unknown class 'NEUTRAL'.*\['NEG', 'POS'\]"):
        EraserMovies(tmp_path)
    bad = annotation()
    bad["evidences"].append([{"docid": "other.txt", "start_token": 0, "end_token": 1}])
    write_split(tmp_path, [bad], {"d1.txt": "only three words", "other.txt": "x"})
    with pytest.raises(ValueError, match="several documents"):
        EraserMovies(tmp_path)
    (tmp_path / "test.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="test.jsonl:1"):
        EraserMovies(tmp_path)


def test_golden_files_read(golden):
    data = EraserMovies(golden / "eraser_synthetic" / "data", split="test")
    assert [s.id for s in data] == ["negR_000.txt", "posR_001.txt", "negR_002.txt", "posR_003.txt"]
    assert [s.label for s in data] == [0, 1, 0, 1]
    assert data[2].rationale == ((10, 19), (22, 27), (38, 47))
    assert " ".join(data[0].words[42:53]).startswith("performance overall visual terrible")


def test_synthetic_is_deterministic_and_split_dependent():
    a, b = SyntheticText(num_samples=6, seed=1), SyntheticText(num_samples=3, seed=1)
    assert [a[i] for i in range(3)] == [b[i] for i in range(3)]  # independent of the dataset size
    other = SyntheticText(num_samples=3, seed=1, split="train")
    assert [s.words for s in other] != [a[i].words for i in range(3)]
    assert [s.words for s in SyntheticText(num_samples=3, seed=2)] != [a[i].words for i in range(3)]


def test_synthetic_evidence_decides_the_label():
    data = SyntheticText(num_samples=40, seed=0, max_evidence=3)
    labels = {s.label for s in data}
    assert labels == {0, 1}
    for s in data:
        assert s.rationale and all(0 <= lo < hi <= len(s.words) for lo, hi in s.rationale)
        inside = {t for lo, hi in s.rationale for t in range(lo, hi)}
        own, other = (POSITIVE, NEGATIVE) if s.label == 1 else (NEGATIVE, POSITIVE)
        words = [w.rstrip(".") for w in s.words]
        assert any(words[t] in own for t in inside)
        assert not any(w in other for w in words)
        assert not any(words[t] in own for t in range(len(words)) if t not in inside)  # filler is neutral


def test_synthetic_writes_the_eraser_layout(tmp_path):
    root = SyntheticText.write_eraser(tmp_path / "synth", sizes={"train": 5, "val": 3, "test": 4}, seed=7)
    for split, size in (("train", 5), ("val", 3), ("test", 4)):
        read = EraserMovies(root, split=split)
        made = SyntheticText(num_samples=size, split=split, seed=7)
        assert [(s.id, s.label, s.words, s.rationale) for s in read] == [
            (s.id, s.label, s.words, s.rationale) for s in made
        ]
    assert (root / "vocab.txt").read_text().split() == vocabulary()


def test_synthetic_words_are_in_the_golden_vocabulary(golden):
    from xaibench.models.hf_bert import bert_tokenizer_from_vocab

    tokenizer = bert_tokenizer_from_vocab(golden / "eraser_synthetic" / "vocab.txt")
    for s in SyntheticText(num_samples=20, seed=0):
        assert tokenizer.unk_token_id not in tokenizer(list(s.words), is_split_into_words=True)["input_ids"]


def test_synthetic_words_are_in_its_own_vocabulary(tmp_path):
    from xaibench.datasets.synthetic_text import write_vocab
    from xaibench.models.hf_bert import bert_tokenizer_from_vocab

    tokenizer = bert_tokenizer_from_vocab(write_vocab(tmp_path / "vocab.txt"))
    for s in SyntheticText(num_samples=20, seed=0):
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(list(s.words), is_split_into_words=True)["input_ids"])
        assert "[UNK]" not in pieces
        assert all(not p.startswith("##") for p in pieces)  # whole words, no letter fallback


def test_synthetic_arguments_are_checked():
    with pytest.raises(ValueError, match="min_words"):
        SyntheticText(min_words=10, max_words=5)


@pytest.mark.parametrize("name", ["eraser_movies", "eraser_synthetic", "synthetic_text"])
def test_dataset_configs_instantiate(name, golden, tmp_path):
    from hydra.utils import instantiate

    SyntheticText.write_eraser(tmp_path / "movies", sizes={"test": 2})
    cfg = OmegaConf.merge(
        {"paths": {"golden_dir": str(golden), "data_dir": str(tmp_path)}},
        {"dataset": OmegaConf.load(ROOT / "conf" / "dataset" / f"{name}.yaml")},
    )
    data = instantiate(cfg.dataset)
    assert data.modality == "text" and len(data) > 0 and "rationale" in data.provides
