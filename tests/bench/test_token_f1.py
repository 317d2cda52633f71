"""Token-F1 (ERASER hard rationale scoring) and the ERASER soft-score / AOPC metrics."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers import ROOT
from xaibench.core.text import top_k_words
from xaibench.core.types import Attribution, Batch, ModelAdapter, Sample
from xaibench.metrics.faithfulness import AOPC, TokenAUPRC
from xaibench.metrics.token_f1 import TokenF1


def text_batch(docs: list[dict], ids: list[str] | None = None) -> tuple[Batch, Attribution]:
    """A batch where every word is one piece: ``[CLS] w_0 … w_{n-1} [SEP] [PAD]…``; maps = word scores."""
    width = max(len(d["scores"]) for d in docs) + 2
    word_index = torch.full((len(docs), width), -1, dtype=torch.long)
    maps = torch.zeros(len(docs), width, dtype=torch.float64)
    for i, d in enumerate(docs):
        n = len(d["scores"])
        word_index[i, 1 : n + 1] = torch.arange(n)
        maps[i, 1 : n + 1] = torch.tensor(d["scores"], dtype=torch.float64)
        maps[i, 0] = 1e9  # [CLS] is never a word
    ids = ids or [f"doc{i}" for i in range(len(docs))]
    batch = Batch(
        ids=tuple(ids),
        inputs={"attention_mask": (word_index >= 0).long()},
        labels=torch.zeros(len(docs), dtype=torch.long),
        extras={
            "word_index": word_index,
            "num_words": torch.tensor([len(d["scores"]) for d in docs]),
            "words": tuple(tuple(d.get("words", [f"w{t}" for t in range(len(d["scores"]))])) for d in docs),
            "rationales": tuple(tuple(d["spans"]) if d["spans"] is not None else None for d in docs),
        },
    )
    att = Attribution(maps=maps, targets=torch.zeros(len(docs), dtype=torch.long), logits=torch.zeros(len(docs), 2))
    return batch, att


def eraser_scores(truth: list[tuple], pred: list[tuple]) -> dict:
    """ERASER ``score_hard_rationale_predictions`` written from its definition (sets of (ann, doc, token))."""

    def f1(p, r):
        return 0 if p == 0 or r == 0 else 2 * p * r / (p + r)

    truth, pred = set(truth), set(pred)
    micro_p, micro_r = len(truth & pred) / len(pred), len(truth & pred) / len(truth)
    by_t, by_p = defaultdict(set), defaultdict(set)
    for r in truth:
        by_t[r[:2]].add(r)
    for r in pred:
        by_p[r[:2]].add(r)
    per = []
    for k in set(by_t) | set(by_p):
        p = len(by_t[k] & by_p[k]) / len(by_p[k]) if by_p[k] else 0
        r = len(by_t[k] & by_p[k]) / len(by_t[k]) if by_t[k] else 0
        per.append((p, r, f1(p, r)))
    return {
        "micro": {"p": micro_p, "r": micro_r, "f1": f1(micro_p, micro_r)},
        "macro": {q: sum(x[j] for x in per) / len(per) for j, q in enumerate("p r f1".split())},
    }


DOCS = [
    {"scores": [0.9, 0.1, 0.8, 0.2, 0.7, 0.3], "spans": [(0, 3)]},
    {"scores": [0.1, 0.2, 0.3, 0.4], "spans": [(3, 4)]},
]


def test_known_answer():
    metric = TokenF1(ks=(1, 2, 3))
    batch, att = text_batch(DOCS)
    rows = metric.update(batch, att, model=None)
    assert rows[0]["p@3"] == pytest.approx(2 / 3) and rows[0]["r@2"] == pytest.approx(2 / 3)
    assert rows[1]["p@2"] == 0.5 and rows[1]["r@1"] == 1.0 and rows[1]["f1@1"] == 1.0
    out = metric.compute()
    # k=1: doc0 {0} (P 1, R 1/3, F1 1/2), doc1 {3} (1, 1, 1)
    assert out["micro_p@1"] == 1.0 and out["micro_r@1"] == 0.5 and out["micro_f1@1"] == pytest.approx(2 / 3)
    assert out["macro_p@1"] == 1.0 and out["macro_r@1"] == pytest.approx(2 / 3)
    assert out["macro_f1@1"] == pytest.approx(0.75)
    assert out["num_docs"] == 2


def test_matches_the_eraser_definition_and_merges_across_shards():
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(9):
        n = int(rng.integers(3, 40))
        spans = []
        for _ in range(int(rng.integers(0, 3))):
            a = int(rng.integers(0, n))
            spans.append((a, int(rng.integers(a + 1, n + 1))))
        scores = rng.normal(size=n).round(1)  # rounding makes ties
        docs.append({"scores": scores.tolist(), "spans": spans})
    ks = (1, 3, 5, 10, 20)
    whole = TokenF1(ks=ks)
    whole.update(*text_batch(docs), model=None)
    shards = [TokenF1(ks=ks) for _ in range(3)]
    for j, shard in enumerate(shards):
        idx = list(range(j, len(docs), 3))
        shard.update(*text_batch([docs[i] for i in idx], [f"doc{i}" for i in idx]), model=None)
    merged = TokenF1(ks=ks)
    for shard in shards:
        merged.merge(shard.state())
    assert merged.compute() == pytest.approx(whole.compute(), rel=1e-12)
    out = whole.compute()
    for k in ks:
        truth, pred = [], []
        for i, d in enumerate(docs):
            truth += [(f"doc{i}", f"doc{i}", t) for a, b in d["spans"] for t in range(a, b)]
            s = torch.tensor(d["scores"], dtype=torch.float64)
            for kk in (kk for kk in ks if kk <= k):  # the reference's cumulative files
                pred += [(f"doc{i}", f"doc{i}", t) for t in top_k_words(s, kk).tolist()]
        ref = eraser_scores(truth, pred)
        for avg in ("micro", "macro"):
            for q in ("p", "r", "f1"):
                assert out[f"{avg}_{q}@{k}"] == pytest.approx(ref[avg][q], abs=1e-12), (avg, q, k)


def test_clamp_and_ties_follow_torch_topk():
    scores = torch.tensor([-3.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    clamped = top_k_words(scores, 4)
    assert clamped[:2].tolist() == [1, 3]
    assert clamped.tolist() == [1, 3, *torch.topk(scores.clamp(min=0), 4).indices[2:].tolist()]
    assert top_k_words(scores, 4, clamp_min=None).tolist() == [1, 3, 2, 0]


def test_cumulative_union_only_differs_on_ties():
    docs = [{"scores": [0.0] * 30, "spans": [(0, 5)]}]
    cumulative, plain = TokenF1(ks=(5, 10)), TokenF1(ks=(5, 10), cumulative=False)
    batch, att = text_batch(docs)
    row_c, row_p = cumulative.update(batch, att, None)[0], plain.update(batch, att, None)[0]
    s = torch.zeros(30, dtype=torch.float64)
    union = set(top_k_words(s, 5).tolist()) | set(top_k_words(s, 10).tolist())
    tp = len(union & set(range(5)))
    assert row_c["p@10"] == pytest.approx(tp / len(union))
    assert row_p["p@10"] == pytest.approx(len(set(top_k_words(s, 10).tolist()) & set(range(5))) / 10)
    distinct = [{"scores": list(np.linspace(1, 0, 30)), "spans": [(0, 5)]}]
    a, b = TokenF1(ks=(5, 10)), TokenF1(ks=(5, 10), cumulative=False)
    assert a.update(*text_batch(distinct), None) == b.update(*text_batch(distinct), None)


def test_unscored_words_are_never_predicted():
    docs = [{"scores": [0.1, 0.5, float("nan"), float("nan")], "spans": [(2, 4)]}]
    row = TokenF1(ks=(3,)).update(*text_batch(docs), None)[0]
    assert row["p@3"] == 0.0 and row["r@3"] == 0.0 and row["f1@3"] == 0.0


def test_documents_without_truth_or_prediction():
    metric = TokenF1(ks=(2,))
    metric.update(*text_batch([{"scores": [0.3, 0.2], "spans": []}, {"scores": [0.3, 0.2], "spans": [(0, 1)]}]), None)
    out = metric.compute()
    assert out["num_docs"] == 2  # a prediction without truth still counts (P = R = 0) as in ERASER
    assert out["macro_p@2"] == pytest.approx(0.25) and out["micro_r@2"] == 1.0
    empty = TokenF1(ks=(2,))
    empty.update(*text_batch([{"scores": [], "spans": []}, {"scores": [1.0], "spans": [(0, 1)]}]), None)
    assert empty.compute()["num_docs"] == 1  # no truth and no prediction: not an ERASER instance


def test_input_errors():
    metric = TokenF1(ks=(1,))
    batch, att = text_batch([{"scores": [1.0], "spans": None}])
    with pytest.raises(ValueError, match="no rationale"):
        metric.update(batch, att, None)
    batch, att = text_batch([{"scores": [1.0], "spans": [(0, 1)]}])
    with pytest.raises(ValueError, match="level='tokens'"):
        metric.update(batch, Attribution(att.maps, att.targets, att.logits, level="pixels"), None)
    with pytest.raises(ValueError, match="word_index"):
        metric.update(Batch(ids=("a",), inputs={}, labels=torch.zeros(1)), att, None)
    with pytest.raises(ValueError, match="distinct positive"):
        TokenF1(ks=(0, 5))
    assert TokenF1.requires == {"rationale"} and TokenF1.modalities == {"text"}


def test_metric_configs_instantiate():
    from hydra.utils import instantiate

    for name, expected in (("token_f1", {"token_f1"}), ("faithfulness", {"token_auprc", "aopc"})):
        path = ROOT / "conf" / "metric" / f"{name}.yaml"
        assert path.read_text().startswith("# @package metrics")
        cfg = OmegaConf.load(path)
        assert set(cfg) == expected
        for key in cfg:
            runner = instantiate(cfg[key])
            assert runner.name == key
    assert instantiate(OmegaConf.load(ROOT / "conf" / "metric" / "token_f1.yaml").token_f1).ks == tuple(range(5, 85, 5))


# -- soft scores ---------------------------------------------------------------------------------------
def test_auprc_matches_sklearn_per_document():
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    rng = np.random.default_rng(1)
    docs = [{"scores": rng.normal(size=12).tolist(), "spans": [(2, 5), (8, 9)]} for _ in range(3)]
    docs.append({"scores": [1.0, 2.0], "spans": []})  # one class only: skipped
    docs.append({"scores": [0.9, 0.8, 0.1, float("nan")], "spans": [(0, 2)]})
    metric = TokenAUPRC()
    rows = metric.update(*text_batch(docs), None)
    areas, aps = [], []
    for d in docs[:3] + docs[4:]:
        truth = np.zeros(len(d["scores"]), dtype=int)
        for a, b in d["spans"]:
            truth[a:b] = 1
        s = np.array(d["scores"])
        s[np.isnan(s)] = np.nanmin(s) - 1
        p, r, _ = precision_recall_curve(truth, s)
        areas.append(auc(r, p))
        aps.append(average_precision_score(truth, s))
    out = metric.compute()
    assert out["auprc"] == pytest.approx(np.mean(areas)) and out["average_precision"] == pytest.approx(np.mean(aps))
    assert out["num_docs"] == 4 and out["num_skipped"] == 1 and math.isnan(rows[3]["auprc"])
    assert rows[4]["average_precision"] == 1.0


class CountingModel(ModelAdapter):
    """A text 'model' whose POS logit is #good - #bad (for known AOPC answers)."""

    modality = "text"

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1).double()

    @property
    def name(self) -> str:
        return "counting"

    def collate(self, samples):
        margin = [[0.0, float(s.words.count("good") - s.words.count("bad"))] for s in samples]
        return Batch(
            ids=tuple(s.id for s in samples),
            inputs=torch.tensor(margin, dtype=torch.float64),
            labels=torch.zeros(len(samples), dtype=torch.long),
        )

    def logits(self, inputs):
        return inputs

    def attention_layers(self):
        return []

    def forward_with_attention(self, inputs, layers=None):
        raise NotImplementedError("a test stub without attention")

    def token_map(self, row):
        raise NotImplementedError("a test stub without tokens")


def test_aopc_known_answer():
    model = CountingModel()
    words = ["good", "good", "x", "bad"] + ["x"] * 6  # 10 words: 1% -> 1 word, 50% -> 5 words
    scores = [0.9, 0.5, 0.1, -0.5] + [0.0] * 6
    batch, att = text_batch([{"scores": scores, "spans": [(0, 2)], "words": words}])
    batch = Batch(
        ids=batch.ids,
        inputs=model.collate([Sample(id="d", words=tuple(words))]).inputs,
        labels=batch.labels,
        extras=batch.extras,
    )
    metric = AOPC(bins=(0.01, 0.2, 0.5))
    row = metric.update(batch, att, model)[0]

    def p_pos(margin):
        return 1 / (1 + math.exp(-margin))

    full = p_pos(1)  # predicted POS with margin good-bad = 1
    assert row["class"] == 1 and row["prob"] == pytest.approx(full)
    # 1%: word 0 (a good); 20%: words 0, 1 (both goods); 50%: words 0, 1, 2 and two zero-scored x's
    assert row["comprehensiveness@0.01"] == pytest.approx(full - p_pos(0))
    assert row["sufficiency@0.01"] == pytest.approx(full - p_pos(1))
    assert row["comprehensiveness@0.2"] == pytest.approx(full - p_pos(-1))
    assert row["sufficiency@0.2"] == pytest.approx(full - p_pos(2))
    assert row["comprehensiveness@0.5"] == pytest.approx(full - p_pos(-1))
    out = metric.compute()
    assert out["aopc_comprehensiveness"] == pytest.approx(row["aopc_comprehensiveness"])
    assert out["aopc_comprehensiveness"] == pytest.approx(
        np.mean([full - p_pos(0), full - p_pos(-1), full - p_pos(-1)])
    )
    merged = AOPC(bins=(0.01, 0.2, 0.5))
    merged.merge(metric.state())
    merged.merge(metric.state())
    assert merged.compute()["aopc_sufficiency"] == pytest.approx(out["aopc_sufficiency"])
    assert merged.compute()["num_docs"] == 2


def test_aopc_on_the_bert_adapter(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from xaibench.datasets.synthetic_text import SyntheticText, write_vocab
    from xaibench.methods.attention import Rollout
    from xaibench.models.hf_bert import HFBert, bert_tokenizer_from_vocab

    tokenizer = bert_tokenizer_from_vocab(write_vocab(tmp_path / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    model = HFBert(model=BertForSequenceClassification(config), tokenizer=tokenizer)
    data = SyntheticText(num_samples=3, seed=0, min_words=5, max_words=20)
    batch = model.collate([data[i] for i in range(3)])
    att = Rollout(start_layer=0)(model, batch, None)
    metric = AOPC()
    rows = metric.update(batch, att, model)
    assert len(rows) == 3 and all(set(r) >= {"aopc_comprehensiveness", "aopc_sufficiency"} for r in rows)
    assert all(-1.0 <= r[f"comprehensiveness@{q:g}"] <= 1.0 for r in rows for q in metric.bins)
    assert metric.compute()["num_docs"] == 3
