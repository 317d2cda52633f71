"""Generated movie reviews with planted evidence: the text path end to end, offline.

Each review is a few sentences of neutral filler words (``the plot was some film ...``) with one or more
planted evidence phrases (``the acting was brilliant``, ``very dull``) whose sentiment word comes from a
small POS or NEG list matching the label; the phrases are the rationale spans. Filler never contains a
sentiment word, so the label is decided by the evidence alone and a fine-tuned classifier can learn it.

Generation is deterministic: sample ``i`` of split ``s`` is drawn from ``random.Random(f"{seed}:{s}:{i}")``
and does not depend on the dataset size. Every word is in the golden 105-piece WordPiece vocabulary
(``../shared/golden/eraser_synthetic/vocab.txt``); :func:`write_vocab` writes an equivalent one.
:meth:`SyntheticText.write_eraser` writes the official ERASER layout (``docs/``, ``{train,val,test}.jsonl``)
so :class:`~xaibench.datasets.eraser.EraserMovies` and the fine-tuning command read it like the real data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from xaibench.core.types import DatasetAdapter, Sample

CLASSES: tuple[str, str] = ("NEG", "POS")
POSITIVE: tuple[str, ...] = ("good", "great", "brilliant", "wonderful", "funny")
NEGATIVE: tuple[str, ...] = ("bad", "awful", "terrible", "boring", "dull", "slow")
NOUNS: tuple[str, ...] = (
    "acting", "actor", "cast", "characters", "dialogue", "director", "effects", "ending", "film", "movie",
    "music", "performance", "plot", "scene", "script", "story", "visual",
)  # fmt: skip
FILLER: tuple[str, ...] = NOUNS + (
    "a", "and", "but", "is", "it", "of", "overall", "some", "that", "the", "this", "to", "very", "was", "with",
)  # fmt: skip
#: evidence phrase templates; "S" is the sentiment word, "N" a noun
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("the", "N", "was", "S"),
    ("S", "N"),
    ("very", "S"),
    ("N", "is", "S"),
    ("a", "S", "N"),
)
SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def vocabulary() -> list[str]:
    """A WordPiece vocabulary covering every generated word (specials, ``.``, words, letters, ``##`` letters)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = sorted(set(FILLER) | set(POSITIVE) | set(NEGATIVE))
    tokens = [*SPECIALS, ".", ",", *words, *letters, *(f"##{c}" for c in letters)]
    return list(dict.fromkeys(tokens))  # "a" is a word and a letter


def write_vocab(path: str | Path) -> Path:
    """Write :func:`vocabulary` as a ``vocab.txt`` (one token a line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    return path


def generate_review(
    rng: random.Random, label: int, num_words: int, num_evidence: int
) -> tuple[list[list[str]], list[tuple[int, int]]]:
    """One review as sentences of words, and its evidence spans over the flattened words.

    Args:
        rng: the sample's random generator.
        label: 0 (NEG) or 1 (POS); picks the sentiment list of the evidence.
        num_words: approximate length of the filler (the evidence phrases come on top).
        num_evidence: number of evidence phrases planted.

    Returns:
        ``(sentences, spans)`` with ``spans`` as ``(start, end)`` word indices, end exclusive.
    """
    sentiment = POSITIVE if label == 1 else NEGATIVE
    sentences: list[list[tuple[str, bool]]] = []  # (word, planted)
    remaining = max(num_words, 1)
    while remaining > 0:
        size = min(remaining, rng.randint(5, 12))
        sentences.append([(rng.choice(FILLER), False) for _ in range(size)])
        remaining -= size
    for _ in range(num_evidence):
        template = rng.choice(TEMPLATES)
        phrase = [rng.choice(sentiment) if t == "S" else rng.choice(NOUNS) if t == "N" else t for t in template]
        sentence = rng.choice(sentences)
        at = rng.randint(0, len(sentence))
        sentence[at:at] = [(w, True) for w in phrase]
    planted = [flag for sentence in sentences for _, flag in sentence]
    spans: list[tuple[int, int]] = []
    start = None
    for index, flag in enumerate([*planted, False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:  # adjacent phrases merge into one span
            spans.append((start, index))
            start = None
    words = [[w for w, _ in sentence] for sentence in sentences]
    for sentence in words:
        sentence[-1] += "."
    return words, spans


class SyntheticText(DatasetAdapter):
    """Synthetic sentiment reviews with planted evidence spans (offline stand-in for ERASER movies).

    Args:
        num_samples: number of reviews.
        split: ``train``, ``val`` or ``test``; different splits draw different reviews.
        seed: base seed; the same ``(seed, split, index)`` always gives the same review.
        min_words, max_words: filler length range per review (evidence phrases come on top).
        max_evidence: each review gets 1..``max_evidence`` evidence phrases.
    """

    modality = "text"
    provides = frozenset({"label", "rationale"})

    def __init__(
        self,
        num_samples: int = 64,
        split: str = "test",
        seed: int = 0,
        min_words: int = 20,
        max_words: int = 60,
        max_evidence: int = 3,
    ) -> None:
        if num_samples < 0 or not 1 <= min_words <= max_words or max_evidence < 1:
            raise ValueError(
                "need num_samples >= 0, 1 <= min_words <= max_words and max_evidence >= 1; got "
                f"num_samples={num_samples}, min_words={min_words}, max_words={max_words}, "
                f"max_evidence={max_evidence}"
            )
        self.split = split
        self.seed = int(seed)
        self.min_words, self.max_words, self.max_evidence = int(min_words), int(max_words), int(max_evidence)
        self._reviews = [self._review(i) for i in range(int(num_samples))]

    def _review(self, index: int) -> tuple[str, int, list[list[str]], list[tuple[int, int]]]:
        rng = random.Random(f"{self.seed}:{self.split}:{index}")
        label = rng.randrange(2)
        sentences, spans = generate_review(
            rng, label, rng.randint(self.min_words, self.max_words), rng.randint(1, self.max_evidence)
        )
        docid = f"{'pos' if label else 'neg'}S_{self.split}_{index:05d}.txt"
        return docid, label, sentences, spans

    def __len__(self) -> int:
        return len(self._reviews)

    def __getitem__(self, index: int) -> Sample:
        docid, label, sentences, spans = self._reviews[index]
        return Sample(
            id=docid,
            label=label,
            words=tuple(w for s in sentences for w in s),
            rationale=tuple(spans),
        )

    @property
    def name(self) -> str:
        return f"synthetic_text_{self.split}"

    def class_names(self) -> Sequence[str]:
        return CLASSES

    def document(self, index: int) -> str:
        """The review as ERASER stores it: sentences on separate lines, words separated by spaces."""
        return "\n".join(" ".join(s) for s in self._reviews[index][2]) + "\n"

    def annotations(self) -> list[dict]:
        """ERASER annotation records (one evidence group per planted phrase)."""
        records = []
        for index, (docid, label, _, spans) in enumerate(self._reviews):
            words = self[index].words
            records.append(
                {
                    "annotation_id": docid,
                    "classification": CLASSES[label],
                    "evidences": [
                        [
                            {
                                "docid": docid,
                                "start_token": start,
                                "end_token": end,
                                "start_sentence": -1,
                                "end_sentence": -1,
                                "text": " ".join(words[start:end]),
                            }
                        ]
                        for start, end in spans
                    ],
                    "query": "What is the sentiment of this review?",
                    "query_type": None,
                }
            )
        return records

    @classmethod
    def write_eraser(
        cls,
        root: str | Path,
        sizes: Mapping[str, int] | None = None,
        seed: int = 0,
        with_vocab: bool = True,
        **kwargs: int,
    ) -> Path:
        """Write train/val/test splits in the ERASER layout (``docs/``, ``<split>.jsonl``) under ``root``.

        Args:
            root: output directory (created).
            sizes: reviews per split; default ``{"train": 200, "val": 50, "test": 50}``.
            seed: base seed (see the class).
            with_vocab: also write ``root/vocab.txt`` (:func:`write_vocab`).
            **kwargs: ``min_words``, ``max_words``, ``max_evidence`` for every split.

        Returns:
            ``root``.
        """
        root = Path(root)
        (root / "docs").mkdir(parents=True, exist_ok=True)
        sizes = dict(sizes or {"train": 200, "val": 50, "test": 50})
        for split, size in sizes.items():
            data = cls(num_samples=size, split=split, seed=seed, **kwargs)
            for index in range(len(data)):
                (root / "docs" / data[index].id).write_text(data.document(index), encoding="utf-8")
            with (root / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
                for record in data.annotations():
                    fh.write(json.dumps(record) + "\n")
        if with_vocab:
            write_vocab(root / "vocab.txt")
        return root
