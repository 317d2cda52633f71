"""The relevance methods on Hugging Face BERT through the LRP engine's BERT canonizer: padded batches equal
single runs, the canonizer keeps the stock logits and leaves nothing behind, gradients are the stock ones,
the ``ours`` rules conserve relevance, unsupported configurations are refused, configs instantiate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bert_helpers import hook_counts, instance_overrides, text_samples, tiny_bert, tiny_bert_net, unpadded_row
from torch import nn

from helpers import tiny_vit
from xaibench.core.types import AttributionMethod, Batch
from xaibench.datasets.synthetic_text import write_vocab
from xaibench.methods._lrp.bert import BertCanonizer, bert_relevance
from xaibench.methods._rollout import rollout
from xaibench.methods.lrp import FullLRP, LRPRollout, PartialLRP, TransformerAttribution
from xaibench.models.hf_bert import HFBert

METHODS: dict[str, Callable[[], AttributionMethod]] = {
    "transformer_attribution": TransformerAttribution,  # BERT default: the last layer
    "transformer_attribution_sl0": lambda: TransformerAttribution(start_layer=0),
    "partial_lrp": PartialLRP,
    "partial_lrp_grad_first": lambda: PartialLRP(layer=0, use_gradient=True),
    "full_lrp": FullLRP,
    "full_lrp_ours": lambda: FullLRP(preset="ours"),
    "lrp_rollout": lambda: LRPRollout(start_layer=0),
}
CONF = Path(__file__).resolve().parents[2] / "conf" / "method"


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


_net, _bert, _samples, _row = tiny_bert_net, tiny_bert, text_samples, unpadded_row
_leftovers, _hooks = instance_overrides, hook_counts


@pytest.fixture(scope="module")
def bert(vocab_path) -> HFBert:
    return _bert(vocab_path)


# -- every method: padded batch == singles, shapes, stock logits, hygiene ---------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_padded_batch_equals_singles(bert: HFBert, name: str) -> None:
    batch = bert.collate(_samples(4))
    mask = batch.inputs["attention_mask"].bool()
    assert not mask.all()  # the batch is padded
    hooks = _hooks(bert.model)
    with torch.no_grad():
        stock = bert.logits(batch.inputs)
    method = METHODS[name]()
    target = torch.tensor([2, 0, 1, 2])
    full = method(bert, batch, target)
    assert full.maps.shape == mask.shape and full.level == "tokens"
    assert full.maps.dtype == torch.float64 and torch.isfinite(full.maps).all()
    assert torch.equal(full.targets, target) and not full.maps.requires_grad
    torch.testing.assert_close(full.logits, stock, rtol=0, atol=1e-12)
    assert (full.maps[~mask] == 0).all()  # padding gets nothing
    for i in range(4):
        single = method(bert, _row(batch, i), target[i : i + 1])
        n = single.maps.shape[1]
        scale = float(full.maps[i].abs().max())
        torch.testing.assert_close(single.maps[0], full.maps[i, :n], rtol=1e-9, atol=1e-9 * scale)
        torch.testing.assert_close(single.logits[0], full.logits[i], rtol=0, atol=1e-12)
    assert _leftovers(bert.model) == [] and _hooks(bert.model) == hooks


@pytest.mark.parametrize("name", list(METHODS))
def test_predicted_target_under_no_grad(bert: HFBert, name: str) -> None:
    batch = bert.collate(_samples(3))
    with torch.no_grad():
        out = METHODS[name]()(bert, batch, None)
        assert not torch.is_grad_enabled()
    assert torch.equal(out.targets, bert.logits(batch.inputs).argmax(-1))


def test_cls_entry_conventions(bert: HFBert) -> None:
    """Reference BERT generator: rollouts set [CLS] to the row minimum, partial and full LRP to 0."""
    batch = bert.collate(_samples(2))
    mask = batch.inputs["attention_mask"].bool()
    for make in (TransformerAttribution, lambda: LRPRollout(0)):
        maps = make()(bert, batch, None).maps
        real = torch.where(mask, maps, torch.inf)
        torch.testing.assert_close(maps[:, 0], real.amin(dim=1), rtol=0, atol=0)
    for make in (PartialLRP, FullLRP):
        assert (make()(bert, batch, None).maps[:, 0] == 0).all()


def test_default_start_layer_is_the_last_for_bert_and_0_for_vit(bert: HFBert) -> None:
    batch = bert.collate(_samples(2))
    default = TransformerAttribution()(bert, batch, None).maps
    for start in (-1, 2):
        torch.testing.assert_close(TransformerAttribution(start_layer=start)(bert, batch, None).maps, default)
    vit = tiny_vit().to(dtype=torch.float64)
    x = torch.rand(2, 3, *vit.image_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vb = Batch(ids=("a", "b"), inputs=x, labels=torch.full((2,), -1))
    torch.testing.assert_close(
        TransformerAttribution()(vit, vb, None).maps, TransformerAttribution(0)(vit, vb, None).maps
    )


def test_normalised_rollout_row_is_the_matrix_product() -> None:
    g = torch.Generator().manual_seed(0)
    mats = [torch.rand(2, 5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    eye = torch.eye(5, dtype=torch.float64)
    norm = [(eye + m) / (eye + m).sum(dim=-1, keepdim=True) for m in mats]
    torch.testing.assert_close(rollout(mats, normalize=True, row=0), (norm[2] @ norm[1] @ norm[0])[:, 0])


def test_float32_is_close_to_float64(vocab_path) -> None:
    m64, m32 = _bert(vocab_path), _bert(vocab_path, dtype=torch.float32)
    batch = m64.collate(_samples(3))
    for make in (TransformerAttribution, PartialLRP):
        a = make()(m64, batch, None).maps
        b = make()(m32, batch, None).maps
        assert b.dtype == torch.float32
        assert (a - b.double()).abs().max() <= 1e-3 * a.abs().max()


# -- the canonizer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ours", "lrp"])
def test_canonizer_keeps_logits_and_leaves_nothing(vocab_path, preset: str) -> None:
    for dtype, atol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        model = _bert(vocab_path, dtype=dtype)
        batch = model.collate(_samples(3))
        with torch.no_grad():
            stock = model.model(**batch.inputs, output_attentions=True)
        hooks = _hooks(model.model)  # transformers installs its output-capturing hooks once, lazily
        with BertCanonizer(model.model, preset, record_blocks=[0, 2]) as canon, torch.no_grad():
            inside = model.model(**batch.inputs, output_attentions=True)
            assert _leftovers(model.model) != []
        torch.testing.assert_close(inside.logits, stock.logits, rtol=0, atol=atol)
        assert len(inside.attentions) == 3
        for b in range(3):  # the output signature is intact: the probabilities multiplied with V
            torch.testing.assert_close(inside.attentions[b], stock.attentions[b], rtol=0, atol=atol)
        assert canon.attention[0] is inside.attentions[0] and canon.attention[2] is inside.attentions[2]
        assert _leftovers(model.model) == [] and _hooks(model.model) == hooks
    with pytest.raises(RuntimeError, match="boom"), BertCanonizer(model.model, preset):
        raise RuntimeError("boom")
    assert _leftovers(model.model) == []
    with BertCanonizer(model.model), pytest.raises(RuntimeError, match="nest"), BertCanonizer(model.model):
        pass
    assert _leftovers(model.model) == []


def test_canonized_gradients_and_attention_are_the_stock_ones(bert: HFBert) -> None:
    """Gradient mode of the rules is the true gradient, padding included."""
    batch = bert.collate(_samples(3))
    t = torch.tensor([0, 2, 1])
    terms = TransformerAttribution(start_layer=0).block_terms(bert, batch, t)
    with torch.enable_grad():
        logits, attn = bert.forward_with_attention(batch.inputs)
        grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), [attn[b] for b in range(3)])
    for b in range(3):
        torch.testing.assert_close(terms.attention[b], attn[b].detach(), rtol=0, atol=1e-14)
        torch.testing.assert_close(terms.gradient[b], grads[b], rtol=1e-10, atol=1e-14)


def test_sdpa_boolean_mask_gives_the_eager_maps(vocab_path) -> None:
    eager, sdpa = _net(vocab_path).double(), _net(vocab_path, attn="sdpa").double()
    assert sdpa.config._attn_implementation == "sdpa"
    batch = _bert(vocab_path).collate(_samples(3))
    for kw in ({"blocks": [0, 2], "gradients": True}, {"input_relevance": True}):
        a = bert_relevance(eager, batch.inputs, None, "lrp", **kw)
        b = bert_relevance(sdpa, batch.inputs, None, "lrp", **kw)
        for x, y in zip((a.relevance, a.gradient), (b.relevance, b.gradient), strict=True):
            assert x.keys() == y.keys()
            for k in x:
                torch.testing.assert_close(x[k], y[k], rtol=1e-12, atol=1e-14)
        if a.input_relevance is not None:
            scale = float(a.input_relevance.abs().max())
            torch.testing.assert_close(b.input_relevance, a.input_relevance, rtol=1e-12, atol=1e-12 * scale)


# -- conservation -------------------------------------------------------------------------------------------


def test_ours_preset_conserves_relevance_through_every_layer(bert: HFBert) -> None:
    """ours: α1β0-joint Linear, rescaled sums, halved products, clone sums and identities all conserve, so
    every encoder layer's input carries the one-hot's relevance (1 per sample) up to the 1e-9 stabilisers;
    padding carries none."""
    net = bert.model
    batch = bert.collate(_samples(3))
    mask = batch.inputs["attention_mask"].bool()
    t = torch.tensor([1, 0, 2])
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in net.bert.encoder.layer]
    try:
        with torch.enable_grad(), BertCanonizer(net, "ours") as canon:
            logits = net(**batch.inputs).logits
            seed = torch.zeros_like(logits).scatter_(1, t[:, None], 1.0)
            with canon.relevance_mode():
                rel = torch.autograd.grad(logits, [*seen, canon.input], seed)
    finally:
        for h in handles:
            h.remove()
    assert rel[0] is not None and len(rel) == 4
    for r in rel:
        torch.testing.assert_close(r.sum(dim=(1, 2)), torch.ones(3, dtype=r.dtype), rtol=0, atol=1e-6)
        assert (r[~mask] == 0).all()
    # FullLRP(ours) reads the same encoder-input relevance (summed over hidden, [CLS] set to 0)
    full = FullLRP("ours")(bert, batch, t).maps
    torch.testing.assert_close(full[:, 1:], (rel[-1].sum(-1) * mask)[:, 1:], rtol=1e-10, atol=1e-12)


def test_lrp_preset_relevance_grows(bert: HFBert) -> None:
    """lrp: separately normalised Linears roughly double the relevance (REFERENCE §2), so full LRP's total
    is far from 1 in magnitude (the reference's BERT full LRP reaches ~1e8)."""
    res = bert_relevance(bert.model, bert.collate(_samples(2)).inputs, None, "lrp", input_relevance=True)
    assert (res.input_relevance.sum(dim=(1, 2)).abs() > 10).all()


# -- refusals and errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"is_decoder": True, "add_cross_attention": True}, "cross-attention"),
        ({"is_decoder": True}, "decoder"),
        ({"position_embedding_type": "relative_key"}, "relative position"),
    ],
)
def test_unsupported_configurations_are_refused(vocab_path, config: dict, match: str) -> None:
    net = _net(vocab_path, layers=1)
    for key, value in config.items():
        setattr(net.config, key, value)
    with pytest.raises(ValueError, match=match):
        BertCanonizer(net)
    assert _leftovers(net) == []


def test_unsupported_modules_and_modes_are_refused(vocab_path) -> None:
    model = _bert(vocab_path, layers=2)
    batch = model.collate(_samples(1))
    model.model.train()
    with pytest.raises(ValueError, match="eval"):
        PartialLRP()(model, batch, None)
    model.model.eval()
    model.model.bert.encoder.layer[1].intermediate.intermediate_act_fn = nn.SiLU().eval()
    with pytest.raises(TypeError, match=r"encoder\.layer\.1\.intermediate\.intermediate_act_fn.*SiLU"):
        TransformerAttribution()(model, batch, None)
    assert _leftovers(model.model) == []
    inter = model.model.bert.encoder.layer[1].intermediate
    del inter.intermediate_act_fn  # a plain function instead of a module
    inter.intermediate_act_fn = torch.tanh
    with pytest.raises(ValueError, match="plain-function activation"):
        FullLRP()(model, batch, None)
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        BertCanonizer(model.model.bert)


def test_bad_arguments(bert: HFBert) -> None:
    batch = bert.collate(_samples(2))
    with pytest.raises(ValueError, match="out of range"):
        PartialLRP(layer=3)(bert, batch, None)
    with pytest.raises(ValueError, match="out of range"):
        TransformerAttribution(start_layer=-4)(bert, batch, None)
    with pytest.raises(ValueError, match="shape"):
        PartialLRP()(bert, batch, torch.tensor([1]))
    with pytest.raises(ValueError, match="lie in"):
        FullLRP()(bert, batch, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="mapping"):
        PartialLRP()(bert, Batch(ids=("a",), inputs=torch.zeros(1, 5), labels=torch.zeros(1)), None)
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        PartialLRP()(object(), batch, None)
    with pytest.raises(ValueError, match="nothing to compute"):
        bert_relevance(bert.model, batch.inputs, None, "lrp")
    assert _leftovers(bert.model) == []


# -- configs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["transformer_attribution_bert", "partial_lrp", "full_lrp", "lrp_rollout"])
def test_method_configs_run_on_bert(bert: HFBert, config: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    method = instantiate(OmegaConf.load(CONF / f"{config}.yaml"))
    assert "text" in type(method).modalities and config.startswith(type(method).name)
    out = method(bert, bert.collate(_samples(2)), None)
    assert torch.isfinite(out.maps).all()
    if config == "transformer_attribution_bert":  # the reference's BERT default: the last layer only
        assert method.start_layer == -1 and method.preset.name == "ours"


def test_rollout_bert_config_is_the_reference_rollout() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from xaibench.methods.attention import Rollout

    method = instantiate(OmegaConf.load(CONF / "rollout_bert.yaml"))
    assert isinstance(method, Rollout) and method.start_layer == 0 and method.head_fusion == "mean"


# -- GPU ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(vocab_path, dtype: torch.dtype) -> None:
    flags = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cpu = _bert(vocab_path)
        gpu = _bert(vocab_path).to(device="cuda", dtype=dtype)
        batch = cpu.collate(_samples(4))
        gbatch = Batch(ids=batch.ids, inputs={k: v.cuda() for k, v in batch.inputs.items()}, labels=batch.labels)
        t = torch.tensor([0, 1, 2, 0])
        for make in METHODS.values():
            out = make()(gpu, gbatch, t.cuda())
            assert out.maps.device.type == "cuda" and out.maps.dtype == dtype
            ref = make()(cpu, batch, t).maps
            tol = 1e-8 if dtype == torch.float64 else 1e-3
            assert (out.maps.double().cpu() - ref).abs().max() <= tol * ref.abs().max()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags
