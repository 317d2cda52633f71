"""``synthetic_text_pairs``: documents with evidence phrases of two topics, a token mask per topic.

Each document is a run of neutral filler words, every one drawn from one shared distribution (uniform over
:data:`FILLER`), into which evidence phrases of two different topics are planted: 1 to ``max_phrases``
phrases per topic, each 2 to 3 words of that topic's own vocabulary (:data:`VOCABULARY`), at random
positions. Only the topic words carry label information, and every word of an evidence span is a topic
word, so the spans are exactly what a classifier can use. Labels are the set of topics present
(multi-label); the ground truth is the word spans of each topic. With ``target=each`` every document is
explained once per topic (see :mod:`xaibench.metrics.class_sensitivity`).

Document ``i`` of split ``s`` is drawn from ``random.Random(f"{seed}:{s}:{i}")`` and does not depend on the
set's size. :meth:`SyntheticTextPairs.occluded` replaces a topic's words with filler (for the evidence
tests); :func:`write_vocab` writes a WordPiece vocabulary holding every word whole.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from xaibench.core.types import DatasetAdapter, Sample
from xaibench.datasets.synthetic_text import SPECIALS

__all__ = ["FILLER", "TOPICS", "VOCABULARY", "SyntheticTextPairs", "generate_document", "vocabulary", "write_vocab"]

TOPICS: tuple[str, ...] = ("sports", "cooking", "weather", "music")
VOCABULARY: dict[str, tuple[str, ...]] = {
    "sports": ("goal", "match", "striker", "referee", "stadium", "league", "coach", "tournament"),
    "cooking": ("recipe", "flour", "oven", "dinner", "spices", "bakery", "chef", "dessert"),
    "weather": ("rain", "storm", "forecast", "cloudy", "thunder", "snow", "humid", "breeze"),
    "music": ("guitar", "melody", "concert", "drummer", "album", "chorus", "orchestra", "rhythm"),
}
FILLER: tuple[str, ...] = (
    "the", "a", "of", "and", "to", "in", "it", "is", "was", "that", "this", "with", "on", "for", "as", "at",
    "by", "from", "some", "very", "then", "also", "there", "they", "we", "one", "day", "people", "time",
    "after", "before", "about",
)  # fmt: skip


def vocabulary() -> list[str]:
    """A WordPiece vocabulary holding every generated word whole (specials first)."""
    words = sorted(set(FILLER) | {w for topic in TOPICS for w in VOCABULARY[topic]})
    return [*SPECIALS, *words]


def write_vocab(path: str | Path) -> Path:
    """Write :func:`vocabulary` as a ``vocab.txt`` (one token a line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    return path


def _spans(tags: Sequence[int], topic: int) -> tuple[tuple[int, int], ...]:
    """Maximal runs of ``topic`` in ``tags`` as ``(start, end)`` word spans, end exclusive."""
    spans, start = [], None
    for i, tag in enumerate([*tags, -1]):
        if tag == topic and start is None:
            start = i
        elif tag != topic and start is not None:
            spans.append((start, i))
            start = None
    return tuple(spans)


def generate_document(
    rng: random.Random, topics: Sequence[int], num_words: int, max_phrases: int
) -> tuple[list[str], list[int]]:
    """One document: its words and, per word, the topic whose evidence it is (``-1`` for filler).

    Args:
        rng: the document's generator.
        topics: indices into :data:`TOPICS` of the topics to plant.
        num_words: filler words (the phrases come on top).
        max_phrases: each topic gets 1 to ``max_phrases`` phrases of 2 to 3 of its words.
    """
    words = [rng.choice(FILLER) for _ in range(max(num_words, 1))]
    tags = [-1] * len(words)
    for topic in topics:
        for _ in range(rng.randint(1, max_phrases)):
            phrase = [rng.choice(VOCABULARY[TOPICS[topic]]) for _ in range(rng.randint(2, 3))]
            # a boundary between words that are not inside one phrase
            slots = [i for i in range(len(words) + 1) if i in (0, len(words)) or tags[i - 1] < 0 or tags[i] < 0]
            at = rng.choice(slots)
            words[at:at] = phrase
            tags[at:at] = [topic] * len(phrase)
    return words, tags


class SyntheticTextPairs(DatasetAdapter):
    """Two-topic documents with token masks per topic, multi-label.

    Args:
        num_samples: number of documents.
        split: ``train``, ``val`` or ``test``; different splits draw different documents.
        seed: base seed; the same ``(seed, split, index)`` always gives the same document.
        min_words, max_words: filler length range per document (the phrases come on top).
        max_phrases: phrases per topic are 1 to ``max_phrases``.
        min_topics, max_topics: topics per document (the benchmark: 2 and 2; the demo model is trained
            on 1 to 2). The count of document ``i`` is ``min_topics + i mod (max_topics - min_topics + 1)``.
    """

    modality = "text"
    provides = frozenset({"labels", "rationale", "class_evidence"})

    def __init__(
        self,
        num_samples: int = 64,
        split: str = "test",
        seed: int = 0,
        min_words: int = 16,
        max_words: int = 32,
        max_phrases: int = 2,
        min_topics: int = 2,
        max_topics: int = 2,
    ) -> None:
        if num_samples < 1 or not 1 <= min_words <= max_words or max_phrases < 1:
            raise ValueError(
                "synthetic_text_pairs needs num_samples >= 1, 1 <= min_words <= max_words and max_phrases >= 1; "
                f"got num_samples={num_samples}, min_words={min_words}, max_words={max_words}, "
                f"max_phrases={max_phrases}"
            )
        if not 1 <= min_topics <= max_topics <= len(TOPICS):
            raise ValueError(
                f"synthetic_text_pairs needs 1 <= min_topics <= max_topics <= {len(TOPICS)}, "
                f"got {min_topics}, {max_topics}"
            )
        self.num_samples, self.split, self.seed = int(num_samples), str(split), int(seed)
        self.min_words, self.max_words, self.max_phrases = int(min_words), int(max_words), int(max_phrases)
        self.min_topics, self.max_topics = int(min_topics), int(max_topics)

    def __len__(self) -> int:
        return self.num_samples

    def _document(self, index: int) -> tuple[list[str], list[int], tuple[int, ...]]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} documents")
        rng = random.Random(f"{self.seed}:{self.split}:{index}")
        count = self.min_topics + index % (self.max_topics - self.min_topics + 1)
        topics = tuple(sorted(rng.sample(range(len(TOPICS)), count)))
        words, tags = generate_document(rng, topics, rng.randint(self.min_words, self.max_words), self.max_phrases)
        return words, tags, topics

    def sample_id(self, index: int) -> str:
        return f"textpair_{self.split}_{index:05d}"

    def __getitem__(self, index: int) -> Sample:
        words, tags, topics = self._document(index)
        per_topic = tuple(_spans(tags, t) for t in topics)
        evidence = [t >= 0 for t in tags]
        return Sample(
            id=self.sample_id(index),
            label=topics[0] if len(topics) == 1 else -1,
            words=tuple(words),
            rationale=_spans([0 if e else -1 for e in evidence], 0),
            labels=topics,
            class_rationales=per_topic,
        )

    def occluded(self, index: int, cls: int) -> tuple[str, ...]:
        """Document ``index`` with every word of topic ``cls`` replaced by a filler word (drawn from the filler
        distribution with a generator of its own, so the result is deterministic).

        Raises:
            ValueError: topic ``cls`` is not in the document.
        """
        words, tags, topics = self._document(index)
        if cls not in topics:
            raise ValueError(f"document {self.sample_id(index)} has no topic {cls} (it has {list(topics)})")
        rng = random.Random(f"{self.seed}:{self.split}:{index}:occlude:{cls}")
        return tuple(rng.choice(FILLER) if tag == cls else word for word, tag in zip(words, tags, strict=True))

    @property
    def name(self) -> str:
        return f"synthetic_text_pairs_{self.split}"

    def class_names(self) -> Sequence[str]:
        return TOPICS

    def texts(self) -> tuple[list[tuple[str, ...]], list[tuple[int, ...]]]:
        """All documents' words and their topics (for training small models)."""
        docs = [self._document(i) for i in range(self.num_samples)]
        return [tuple(w) for w, _, _ in docs], [t for _, _, t in docs]
