"""The Hugging Face BERT adapter: tokenisation, piece->word map, truncation, maps, batching, loading."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from xaibench.core.text import top_k_words, word_scores
from xaibench.core.types import Sample
from xaibench.datasets.synthetic_text import SyntheticText, write_vocab
from xaibench.methods.attention import AttnGradCAM, RawAttention, Rollout
from xaibench.models.hf_bert import HFBert, bert_tokenizer_from_vocab


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


def tiny_bert(vocab_path, max_length: int = 512, seed: int = 0, layers: int = 2) -> HFBert:
    """A random 2-layer BERT with peaky attention (spread weights) and the synthetic vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = bert_tokenizer_from_vocab(vocab_path)
    config = BertConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    net = BertForSequenceClassification(config)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "LayerNorm.weight" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.3)
    return HFBert(model=net, tokenizer=tokenizer, max_length=max_length, name="tiny_bert")


@pytest.fixture(scope="module")
def bert(vocab_path):
    return tiny_bert(vocab_path).to(dtype=torch.float64)


def docs(n: int = 4) -> list[Sample]:
    data = SyntheticText(num_samples=n, seed=3, min_words=5, max_words=30)
    return [data[i] for i in range(n)]


def test_collate_shapes_and_extras(bert):
    samples = docs(3)
    batch = bert.collate(samples)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert ids.shape == mask.shape == batch.extras["word_index"].shape
    assert ids.dtype == torch.long and batch.labels.tolist() == [s.label for s in samples]
    assert batch.extras["words"] == tuple(s.words for s in samples)
    assert batch.extras["rationales"] == tuple(s.rationale for s in samples)
    assert batch.extras["num_words"].tolist() == [len(s.words) for s in samples]
    assert not batch.extras["truncated"].any()
    lengths = mask.sum(dim=1)
    assert int(lengths.max()) == ids.shape[1]  # padded to the longest document
    for i, s in enumerate(samples):
        wi = batch.extras["word_index"][i]
        n = int(lengths[i])
        assert ids[i, 0] == bert.tokenizer.cls_token_id and ids[i, n - 1] == bert.tokenizer.sep_token_id
        assert wi[0] == -1 and wi[n - 1] == -1 and (wi[n:] == -1).all()
        # every word has a piece, in order
        assert wi[1 : n - 1].unique_consecutive().tolist() == list(range(len(s.words)))
        assert int(batch.extras["num_pieces"][i]) == n
        assert int(batch.extras["num_scored_words"][i]) == len(s.words)


def test_pieces_match_tokenizing_the_raw_document(bert):
    data = SyntheticText(num_samples=3, seed=5)
    for i in range(len(data)):
        raw = bert.tokenizer(data.document(i), add_special_tokens=True, truncation=True, max_length=512)
        assert bert.collate([data[i]]).inputs["input_ids"][0].tolist() == raw["input_ids"]


def test_word_scores_are_the_max_over_pieces(bert):
    # "unbelievably." splits into many pieces (letters + "."), "€uro" is a single [UNK] piece
    sample = Sample(id="d", words=("good", "unbelievably.", "€uro", "plot"))
    batch = bert.collate([sample])
    pieces = bert.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][0])
    wi = batch.extras["word_index"][0]
    assert pieces.count("[UNK]") == 1 and int(wi[pieces.index("[UNK]")]) == 2
    position = torch.arange(len(pieces), dtype=torch.float64)[None]
    scores = torch.where(position % 2 == 0, position, -position)  # a word's max is not just its last piece
    words = bert.word_scores(scores, batch)[0]
    for w in range(4):
        assert words[w] == scores[0][wi == w].max()
    assert not torch.isnan(words).any()


def test_words_without_pieces_get_no_score(bert):
    sample = Sample(id="d", words=("good", "\u200b", "plot"))  # the zero-width space tokenises to nothing
    batch = bert.collate([sample])
    words = bert.word_scores(torch.ones_like(batch.inputs["input_ids"], dtype=torch.float64), batch)[0]
    assert torch.isnan(words).tolist() == [False, True, False]
    assert top_k_words(words, 3).tolist() in ([0, 2], [2, 0])
    assert int(batch.extras["num_scored_words"][0]) == 2


def test_truncation_is_reported(vocab_path, caplog):
    model = tiny_bert(vocab_path, max_length=12)
    long = Sample(id="long_doc", words=tuple(["good", "plot"] * 20))
    short = Sample(id="short_doc", words=("bad",))
    with caplog.at_level(logging.WARNING, logger="xaibench.models.hf_bert"):
        batch = model.collate([long, short])
    assert batch.inputs["input_ids"].shape == (2, 12)
    assert batch.extras["truncated"].tolist() == [True, False]
    assert batch.extras["num_pieces"].tolist() == [42, 3]
    assert batch.extras["num_scored_words"].tolist() == [10, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "long_doc" in messages[0] and "30 of 42 pieces" in messages[0]
    assert "30 of 40 words" in messages[0]
    scores = model.word_scores(torch.rand(2, 12, dtype=torch.float64), batch)
    assert torch.isnan(scores[0, 10:]).all() and not torch.isnan(scores[0, :10]).any()
    assert set(top_k_words(scores[0], 25).tolist()) == set(range(10))  # never a truncated word
    with caplog.at_level(logging.WARNING, logger="xaibench.models.hf_bert"):
        caplog.clear()
        model.collate([long])  # the same document again (e.g. perturbation metrics) is not re-reported
    assert not caplog.records


def test_max_length_is_capped_by_the_position_embeddings(vocab_path):
    assert tiny_bert(vocab_path, max_length=512).max_length == 128


def test_token_map_zeroes_cls_and_padding(bert):
    batch = bert.collate(docs(3))
    with torch.inference_mode():
        bert.logits(batch.inputs)
    row = torch.rand(batch.inputs["input_ids"].shape, dtype=torch.float64) + 1
    out = bert.token_map(row)
    mask = batch.inputs["attention_mask"].bool()
    assert (out[:, 0] == 0).all()
    assert (out[~mask] == 0).all()
    assert torch.equal(out[:, 1:][mask[:, 1:]], row[:, 1:][mask[:, 1:]])
    with pytest.raises(ValueError, match="padding mask"):
        bert.token_map(row[:, :-1])
    assert torch.equal(bert.token_map(row[:, :-1], attention_mask=mask[:, :-1]), out[:, :-1])
    low = bert.token_map(row, cls="min")  # the reference's BERT transformer attribution convention
    for i in range(len(row)):
        assert low[i, 0] == row[i][mask[i]].min()
    assert torch.equal(low[:, 1:], out[:, 1:])


def test_forward_with_attention_returns_probabilities_in_the_graph(bert):
    batch = bert.collate(docs(2))
    logits, attn = bert.forward_with_attention(batch.inputs, layers=[0, -1])
    assert sorted(attn) == [0, 1] and logits.shape == (2, 2)
    a = attn[1]
    assert a.shape[:2] == (2, 4) and a.shape[-1] == a.shape[-2] == batch.inputs["input_ids"].shape[1]
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    pad = ~batch.inputs["attention_mask"].bool()
    assert (a.permute(0, 1, 3, 2)[pad[:, None, :, None].expand_as(a)] == 0).all()  # padded keys get 0
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), a)  # the recorded tensor is the one used with V
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="out of range"):
        bert.forward_with_attention(batch.inputs, layers=[5])


def test_sdpa_is_refused(vocab_path):
    model = tiny_bert(vocab_path)
    model.model.set_attn_implementation("sdpa")
    batch = model.collate(docs(1))
    with pytest.raises(RuntimeError, match="eager"):
        model.forward_with_attention(batch.inputs)


def test_prebuilt_sdpa_model_is_switched_to_eager(vocab_path):
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = bert_tokenizer_from_vocab(vocab_path)
    net = BertForSequenceClassification(
        BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    adapter = HFBert(model=net, tokenizer=tokenizer)
    _, attn = adapter.forward_with_attention(adapter.collate(docs(1)).inputs)
    assert len(attn) == 1


@pytest.mark.parametrize(
    "method",
    [RawAttention(), Rollout(start_layer=0), Rollout(start_layer=1)],
    ids=["raw_attention", "rollout_sl0", "rollout_sl1"],
)
def test_batch_of_n_equals_n_batches_of_one(bert, method):
    samples = docs(4)
    batch = bert.collate(samples)
    assert len(set(batch.inputs["attention_mask"].sum(1).tolist())) > 1  # really padded
    together = method(bert, batch, batch.labels)
    for i, s in enumerate(samples):
        single = bert.collate([s])
        alone = method(bert, single, single.labels)
        n = alone.maps.shape[1]
        torch.testing.assert_close(together.maps[i, :n], alone.maps[0], rtol=1e-12, atol=1e-14)
        assert (together.maps[i, n:] == 0).all()
        torch.testing.assert_close(together.logits[i], alone.logits[0], rtol=1e-12, atol=1e-14)
        ws_together = bert.word_scores(together.maps, batch)[i, : len(s.words)]
        torch.testing.assert_close(ws_together, bert.word_scores(alone.maps, single)[0], rtol=1e-12, atol=1e-14)


def test_attn_gradcam_batch_of_n_equals_n_batches_of_one(bert):
    samples = docs(4)
    batch = bert.collate(samples)
    method = AttnGradCAM()
    together = method(bert, batch, batch.labels)
    for i, s in enumerate(samples):
        single = bert.collate([s])
        alone = method(bert, single, single.labels)
        n = alone.maps.shape[1]
        torch.testing.assert_close(together.maps[i, :n], alone.maps[0], rtol=1e-10, atol=1e-12)


def test_attn_gradcam_runs_with_the_bert_convention(bert):
    batch = bert.collate(docs(1))
    out = AttnGradCAM()(bert, batch, None)
    assert out.maps.shape == batch.inputs["input_ids"].shape and out.maps[0, 0] == 0
    assert float(out.maps.max()) <= 1.0 and float(out.maps.min()) >= 0.0


def test_word_scores_validates_shapes():
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        word_scores(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long), [1, 1])
    with pytest.raises(ValueError, match="num_words"):
        word_scores(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), [1])


def test_constructor_errors(vocab_path, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        HFBert()
    with pytest.raises(ValueError, match="state_dict_path"):
        HFBert(config_path="x.json")
    with pytest.raises(ValueError, match="tokenizer"):
        HFBert(model=tiny_bert(vocab_path).model)
    with pytest.raises(FileNotFoundError, match="vocab"):
        bert_tokenizer_from_vocab(tmp_path / "missing.txt")


def test_state_dict_mismatch_names_the_keys(vocab_path, tmp_path):
    import json

    model = tiny_bert(vocab_path)
    config = model.model.config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"bert_config": config}))
    state = {k: v for k, v in model.model.state_dict().items() if k != "classifier.bias"}
    state["bert.embeddings.position_ids"] = torch.arange(128)[None]  # stale buffer: dropped silently
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="classifier.bias"):
        HFBert(
            config_path=str(tmp_path / "config.json"), state_dict_path=str(tmp_path / "sd.pt"), vocab_path=vocab_path
        )
    state["classifier.bias"] = model.model.state_dict()["classifier.bias"]
    torch.save(state, tmp_path / "sd.pt")
    loaded = HFBert(
        config_path=str(tmp_path / "config.json"), state_dict_path=str(tmp_path / "sd.pt"), vocab_path=vocab_path
    )
    batch = loaded.collate(docs(2))
    with torch.inference_mode():
        torch.testing.assert_close(loaded.logits(batch.inputs), model.logits(batch.inputs))


def test_checkpoint_directory_round_trip(vocab_path, tmp_path):
    model = tiny_bert(vocab_path)
    model.model.config.id2label = {0: "NEG", 1: "POS"}
    model.model.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    loaded = HFBert(checkpoint=str(tmp_path), local_files_only=True)
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.class_names() == ["NEG", "POS"] and loaded.name == tmp_path.name
    batch = loaded.collate(docs(2))
    assert torch.equal(batch.inputs["input_ids"], model.collate(docs(2)).inputs["input_ids"])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.logits(batch.inputs), model.logits(batch.inputs))


def test_text_model_refuses_images(bert):
    with pytest.raises(TypeError, match="text model"):
        bert.collate([Sample(id="img", image=torch.zeros(3, 8, 8))])


def test_model_configs_instantiate(golden):
    from hydra.utils import instantiate

    from helpers import ROOT

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "bert_small.yaml")
    cfg = OmegaConf.merge({"paths": {"golden_dir": str(golden)}}, {"model": cfg})
    model = instantiate(cfg.model)
    assert isinstance(model, HFBert) and model.name == "bert_small" and len(model.attention_layers()) == 12
    movies = OmegaConf.load(ROOT / "conf" / "model" / "bert_movies.yaml")
    assert OmegaConf.is_missing(movies, "checkpoint") and movies._target_ == "xaibench.models.hf_bert.HFBert"
