"""synthetic_text_pairs: deterministic bytes, evidence spans hold exactly the topic words, exact occlusion."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from xaibench.datasets.synthetic_text_pairs import (
    FILLER,
    TOPICS,
    VOCABULARY,
    SyntheticTextPairs,
    vocabulary,
    write_vocab,
)


def _digest(data: SyntheticTextPairs) -> str:
    h = hashlib.sha256()
    for i in range(len(data)):
        s = data[i]
        h.update(repr((s.id, s.label, s.words, s.rationale, s.labels, s.class_rationales)).encode())
    return h.hexdigest()


def test_same_bytes_twice_and_splits_differ() -> None:
    assert _digest(SyntheticTextPairs(20, seed=2)) == _digest(SyntheticTextPairs(20, seed=2))
    assert _digest(SyntheticTextPairs(20, seed=2)) != _digest(SyntheticTextPairs(20, seed=3))
    assert _digest(SyntheticTextPairs(20, split="train")) != _digest(SyntheticTextPairs(20, split="test"))
    # a document does not depend on the size of the set
    assert SyntheticTextPairs(5)[3].words == SyntheticTextPairs(50)[3].words


def test_vocabularies_are_disjoint() -> None:
    words = [w for t in TOPICS for w in VOCABULARY[t]]
    assert len(words) == len(set(words))
    assert not set(words) & set(FILLER)
    assert len(FILLER) == len(set(FILLER))


def test_spans_hold_exactly_the_topic_words() -> None:
    data = SyntheticTextPairs(60, seed=1)
    topics_seen = Counter()
    for i in range(len(data)):
        s = data[i]
        assert s.label == -1 and len(s.labels) == 2 and s.labels[0] < s.labels[1]
        topics_seen.update(s.labels)
        owner = [-1] * len(s.words)
        for topic, spans in zip(s.labels, s.class_rationales, strict=True):
            assert spans, f"{s.id}: topic {topic} has no evidence"
            for start, end in spans:
                assert 0 <= start < end <= len(s.words)
                for j in range(start, end):
                    assert owner[j] == -1  # topics never share a word
                    owner[j] = topic
        for word, topic in zip(s.words, owner, strict=True):
            if topic < 0:
                assert word in FILLER
            else:
                assert word in VOCABULARY[TOPICS[topic]]
        union = {j for a, b in s.rationale for j in range(a, b)}
        assert union == {j for j, t in enumerate(owner) if t >= 0}
    assert set(topics_seen) == set(range(len(TOPICS)))


def test_occlusion_replaces_only_the_topic_words_with_filler() -> None:
    data = SyntheticTextPairs(4, seed=0)
    s = data[2]
    for topic, spans in zip(s.labels, s.class_rationales, strict=True):
        occluded = data.occluded(2, topic)
        assert occluded == data.occluded(2, topic)  # deterministic
        inside = {j for a, b in spans for j in range(a, b)}
        assert len(occluded) == len(s.words)
        for j, (before, after) in enumerate(zip(s.words, occluded, strict=True)):
            if j in inside:
                assert after in FILLER
            else:
                assert after == before
    absent = next(t for t in range(len(TOPICS)) if t not in s.labels)
    with pytest.raises(ValueError, match="has no topic"):
        data.occluded(2, absent)


def test_one_or_two_topics_for_training() -> None:
    data = SyntheticTextPairs(6, split="train", min_topics=1, max_topics=2)
    assert [len(data[i].labels) for i in range(6)] == [1, 2, 1, 2, 1, 2]
    assert data[0].label == data[0].labels[0]
    docs, topics = data.texts()
    assert len(docs) == 6 and topics[1] == data[1].labels


def test_every_word_is_one_word_piece(tmp_path) -> None:
    from xaibench.models.bert_files import bert_tokenizer_from_vocab

    tokenizer = bert_tokenizer_from_vocab(write_vocab(tmp_path / "vocab.txt"))
    assert len(tokenizer.get_vocab()) == len(vocabulary())
    words = list(FILLER) + [w for t in TOPICS for w in VOCABULARY[t]]
    pieces = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert len(pieces) == len(words) and tokenizer.unk_token_id not in pieces


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_samples >= 1"):
        SyntheticTextPairs(0)
    with pytest.raises(ValueError, match="min_words <= max_words"):
        SyntheticTextPairs(min_words=10, max_words=5)
    with pytest.raises(ValueError, match="min_topics"):
        SyntheticTextPairs(min_topics=3, max_topics=2)
    with pytest.raises(IndexError):
        SyntheticTextPairs(2)[2]
