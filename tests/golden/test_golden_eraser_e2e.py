"""ERASER token-F1 end to end against the reference (``eraser_e2e_golden.json``, ``eraser_synthetic/``).

The reference pipeline (``bert_pipeline.py`` + ERASER ``metrics.py``, REFERENCE §6) was run with the small
BERT in float64 on four ERASER-format reviews, explaining the ground-truth class. Here the same documents
go through :class:`EraserMovies` -> :class:`HFBert` (padded batches) -> our method -> per-word scores
(max over word-pieces of the clamped map) -> :class:`TokenF1`, and must give the reference's per-word
scores (golden tolerance), its top-k word lists (exactly, incl. the cumulative file layout) and its
token-F1 micro and macro P/R/F1 for every k (to 1e-9). Methods are discovered from the JSON; those the LRP
engine does not support for BERT yet are skipped with the reason.
"""

from __future__ import annotations

import importlib
import json
from functools import lru_cache

import pytest
import torch

from helpers import assert_golden_close, golden_dir
from xaibench.core.text import top_k_words

FILE = "eraser_e2e_golden.json"
MODEL_STEM = "bert_small"  # the end-to-end files were produced with the small BERT
# golden method folder -> (module, class, kwargs) as bert_pipeline.py calls them (REFERENCE §3.2)
METHODS = {
    "transformer_attribution": ("xaibench.methods.lrp", "TransformerAttribution", {"start_layer": 11}),
    "partial_lrp": ("xaibench.methods.lrp", "PartialLRP", {}),
    "rollout": ("xaibench.methods.attention", "Rollout", {"start_layer": 0}),
    "lrp": ("xaibench.methods.lrp", "FullLRP", {}),
}


def _golden() -> dict:
    path = golden_dir() / FILE
    return json.loads(path.read_text()) if path.is_file() else {}


GOLDEN_METHODS = sorted(_golden())


@lru_cache(maxsize=1)
def _model():
    from xaibench.models.hf_bert import HFBert

    d = golden_dir()
    return HFBert(
        config_path=str(d / f"{MODEL_STEM}_config.json"),
        state_dict_path=str(d / f"{MODEL_STEM}_state_dict.pt"),
        vocab_path=str(d / "eraser_synthetic" / "vocab.txt"),
        name=MODEL_STEM,
    ).to(dtype=torch.float64)


def _dataset():
    from xaibench.datasets.eraser import EraserMovies

    return EraserMovies(golden_dir() / "eraser_synthetic" / "data", split="test")


def _method(name: str):
    if name not in METHODS:
        pytest.fail(f"golden method {name!r} has no mapping in this test")
    module, cls, kwargs = METHODS[name]
    method_cls = getattr(importlib.import_module(module), cls, None)
    if method_cls is None:
        pytest.skip(f"{name}: {module}.{cls} is missing")
    if "text" not in method_cls.modalities:
        pytest.skip(
            f"{name}: {module}.{cls} does not support BERT yet (modalities {sorted(method_cls.modalities)}); "
            "needs the LRP engine's BERT canonizer"
        )
    return method_cls(**kwargs)


def _identifier_lists(method: str, k: int) -> dict[str, list[int]]:
    path = golden_dir() / "eraser_synthetic" / "results" / method / f"identifier_results_{k}.json"
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        (rat,) = row["rationales"]
        out[row["annotation_id"]] = [p["start_token"] for p in rat["hard_rationale_predictions"]]
    return out


@pytest.mark.golden
def test_golden_methods_exist(golden) -> None:
    assert GOLDEN_METHODS, f"{golden / FILE} holds no methods"


@pytest.mark.golden
def test_word_pieces_match_the_reference_tokenisation(golden) -> None:
    """``encode_plus(doc_string, max_length=512, truncation=True)`` on the raw file == our word-split ids."""
    model = _model()
    data = _dataset()
    for sample in data:
        raw = (golden / "eraser_synthetic" / "data" / "docs" / sample.id).read_text()
        ref = model.tokenizer(raw, add_special_tokens=True, max_length=512, truncation=True)["input_ids"]
        assert model.collate([sample]).inputs["input_ids"][0].tolist() == ref, sample.id


@pytest.mark.golden
@pytest.mark.parametrize("batch_size", [4, 1])
@pytest.mark.parametrize("name", GOLDEN_METHODS)
def test_token_f1_end_to_end(name: str, batch_size: int) -> None:
    from xaibench.metrics.token_f1 import TokenF1

    method = _method(name)
    golden = _golden()[name]
    ks = tuple(sorted(int(k) for k in golden["per_k"]))
    model, data = _model(), _dataset()
    assert sorted(s.id for s in data) == sorted(golden["word_scores"])
    metric = TokenF1(ks=ks)
    files = {k: _identifier_lists(name, k) for k in ks}
    for start in range(0, len(data), batch_size):
        batch = model.collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        attribution = method(model, batch, batch.labels)  # the reference explains the ground-truth class
        scores = model.word_scores(attribution.maps.clamp(min=0), batch)
        for i, doc in enumerate(batch.ids):
            n = len(golden["word_scores"][doc])
            assert int(batch.extras["num_words"][i]) == n, doc
            assert_golden_close(scores[i, :n], golden["word_scores"][doc], f"{name} {doc} word scores")
            cumulative: list[int] = []
            for k in ks:
                cumulative += top_k_words(scores[i, :n], k).tolist()
                assert cumulative == files[k][doc], f"{name} {doc} top-{k} words"
        metric.update(batch, attribution, model)
    out = metric.compute()
    for k in ks:
        prf = golden["per_k"][str(k)]["token_prf"]
        for avg in ("micro", "macro"):
            for q in ("p", "r", "f1"):
                ours, ref = out[f"{avg}_{q}@{k}"], prf[f"instance_{avg}"][q]
                assert ours == pytest.approx(ref, abs=1e-9), f"{name} token {avg} {q}@{k}: {ours} vs {ref}"
        assert out[f"micro_f1@{k}"] == pytest.approx(golden["per_k"][str(k)]["token_f1_instance_micro"], abs=1e-9)
        assert out[f"macro_f1@{k}"] == pytest.approx(golden["per_k"][str(k)]["token_f1_instance_macro"], abs=1e-9)


@pytest.mark.golden
@pytest.mark.parametrize("name", GOLDEN_METHODS)
def test_golden_json_agrees_with_the_scorer_files(name: str, golden) -> None:
    """The JSON's token P/R/F1 are the reference scorer's ``scores_<k>.json`` (guards the fixture itself)."""
    for k, entry in _golden()[name]["per_k"].items():
        scorer = json.loads((golden / "eraser_synthetic" / "results" / name / f"scores_{k}.json").read_text())
        assert scorer["token_prf"] == entry["token_prf"]


@pytest.mark.golden
@pytest.mark.parametrize("name", GOLDEN_METHODS)
def test_scorer_on_the_reference_word_scores(name: str) -> None:
    """The protocol alone, for every golden method: the reference's own per-word scores through our top-k
    and :class:`TokenF1` give its word lists and token P/R/F1 (ties among clamped zeros included)."""
    from xaibench.core.types import Attribution, Batch
    from xaibench.metrics.token_f1 import TokenF1

    golden = _golden()[name]
    ks = tuple(sorted(int(k) for k in golden["per_k"]))
    files = {k: _identifier_lists(name, k) for k in ks}
    metric = TokenF1(ks=ks)
    for sample in _dataset():
        scores = torch.tensor(golden["word_scores"][sample.id], dtype=torch.float64)
        cumulative: list[int] = []
        for k in ks:
            cumulative += top_k_words(scores, k).tolist()
            assert cumulative == files[k][sample.id], f"{name} {sample.id} top-{k} words"
        n = len(scores)
        batch = Batch(
            ids=(sample.id,),
            inputs={},
            labels=torch.tensor([sample.label]),
            extras={
                "word_index": torch.arange(n)[None],
                "num_words": torch.tensor([n]),
                "rationales": (sample.rationale,),
            },
        )
        metric.update(batch, Attribution(scores[None], torch.tensor([sample.label]), torch.zeros(1, 2)), None)
    out = metric.compute()
    for k in ks:
        prf = golden["per_k"][str(k)]["token_prf"]
        for avg in ("micro", "macro"):
            for q in ("p", "r", "f1"):
                assert out[f"{avg}_{q}@{k}"] == pytest.approx(prf[f"instance_{avg}"][q], abs=1e-9), (avg, q, k)
