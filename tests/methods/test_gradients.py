"""The Captum baselines (``saliency``, ``input_x_gradient``, ``integrated_gradients``, ``smoothgrad``): through our
adapters they give exactly what Captum gives when called directly on the same model and inputs (ViT pixels,
BERT word-piece embeddings), a batch of N equals N batches of one, costs, determinism, errors, configs."""

from __future__ import annotations

from pathlib import Path

import captum.attr as ca
import pytest
import torch
from bert_helpers import hook_counts, instance_overrides, text_samples, tiny_bert, unpadded_row
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import tiny_vit
from xaibench.core.types import Batch
from xaibench.datasets.synthetic_text import write_vocab
from xaibench.methods.gradients import InputXGradient, IntegratedGradients, Saliency, SmoothGrad

CONF = Path(__file__).resolve().parents[2] / "conf" / "method"
METHODS = {
    "saliency": Saliency,
    "input_x_gradient": InputXGradient,
    "integrated_gradients": lambda: IntegratedGradients(n_steps=6, internal_batch_size=8),
    "smoothgrad": lambda: SmoothGrad(nt_samples=4),
}


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.zeros(len(x), dtype=torch.long))


@pytest.fixture(scope="module")
def vit():
    return tiny_vit().to(dtype=torch.float64)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt"))


# -- exactly Captum ----------------------------------------------------------------------------------------


def _captum_vit(name: str, net: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, ids) -> torch.Tensor:
    """Captum on the stock timm model, as a user would call it; channels reduced as documented."""
    if name == "saliency":
        return ca.Saliency(net).attribute(x.clone().requires_grad_(True), target=target, abs=True).abs().sum(1)
    if name == "input_x_gradient":
        return ca.InputXGradient(net).attribute(x.clone().requires_grad_(True), target=target).sum(1)
    if name == "integrated_gradients":
        black = torch.full((1, 3, 32, 32), -1.0, dtype=x.dtype)  # pixel 0 through mean 0.5, std 0.5
        ig = ca.IntegratedGradients(net)
        return ig.attribute(x, baselines=black, target=target, n_steps=6, internal_batch_size=8).sum(1)
    maps = []
    for i in range(len(x)):  # SmoothGrad: each sample's noise from its own seed
        torch.manual_seed(SmoothGrad(nt_samples=4).noise_seed(ids[i]))
        xi = x[i : i + 1]
        sigma = 0.15 * float(xi.max() - xi.min())
        nt = ca.NoiseTunnel(ca.Saliency(net))
        maps.append(nt.attribute(xi, nt_type="smoothgrad", nt_samples=4, stdevs=sigma, target=target[i], abs=True))
    return torch.cat(maps).abs().sum(1)


@pytest.mark.parametrize("name", list(METHODS))
def test_vit_is_captum_called_directly(vit, name: str) -> None:
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 0, 3])
    batch = _batch(x)
    out = METHODS[name]()(vit, batch, target)
    assert out.level == "pixels" and out.maps.shape == (3, 32, 32) and torch.equal(out.targets, target)
    torch.testing.assert_close(out.maps, _captum_vit(name, vit.model, x, target, batch.ids), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, vit.model(x), rtol=0, atol=1e-13)


def _captum_bert(name: str, net: torch.nn.Module, batch: Batch, target: torch.Tensor, tokenizer) -> torch.Tensor:
    """Captum on the stock Hugging Face model (Captum's BERT tutorial style), one unpadded document."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    layer = net.bert.embeddings.word_embeddings

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return net(input_ids=ids, attention_mask=mask).logits

    if name == "saliency":
        m = ca.LayerGradientXActivation(forward, layer, multiply_by_inputs=False)
        return m.attribute(ids, target=target, additional_forward_args=(mask,)).abs().sum(-1)
    if name == "input_x_gradient":
        m = ca.LayerGradientXActivation(forward, layer)
        return m.attribute(ids, target=target, additional_forward_args=(mask,)).sum(-1)
    if name == "integrated_gradients":
        ref = torch.tensor(
            [[tokenizer.cls_token_id] + [tokenizer.pad_token_id] * (ids.shape[1] - 2) + [tokenizer.sep_token_id]]
        )
        m = ca.LayerIntegratedGradients(forward, layer)
        kw = {"target": target, "additional_forward_args": (mask,), "n_steps": 6, "internal_batch_size": 8}
        return m.attribute(ids, baselines=ref, **kw).sum(-1)
    embeds = layer(ids).detach()
    torch.manual_seed(SmoothGrad(nt_samples=4).noise_seed(batch.ids[0]))
    sigma = 0.15 * float(embeds.max() - embeds.min())
    nt = ca.NoiseTunnel(ca.Saliency(lambda e, m: net(inputs_embeds=e, attention_mask=m).logits))
    kw = {"nt_samples": 4, "stdevs": sigma, "target": target, "additional_forward_args": (mask,), "abs": True}
    return nt.attribute(embeds, nt_type="smoothgrad", **kw).abs().sum(-1)


@pytest.mark.parametrize("name", list(METHODS))
def test_bert_is_captum_called_directly(bert, name: str) -> None:
    batch = bert.collate(text_samples(3))
    target = torch.tensor([2, 0, 1])
    out = METHODS[name]()(bert, batch, target)
    mask = batch.inputs["attention_mask"].bool()
    assert out.level == "tokens" and out.maps.shape == mask.shape
    assert (out.maps[~mask] == 0).all() and (out.maps[:, 0] == 0).all()  # padding and [CLS] entry 0
    for i in range(3):
        one = unpadded_row(batch, i)
        want = _captum_bert(name, bert.model, one, target[i : i + 1], bert.tokenizer)[0].detach()
        n = want.shape[0]
        want[0] = 0
        # padding changes the rounding only (masked attention), so "exactly" is to float64 rounding here
        torch.testing.assert_close(out.maps[i, :n], want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))


# -- batching, costs, determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_vit_batch_equals_singles_and_leaves_nothing(vit, name: str) -> None:
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3])
    hooks = hook_counts(vit.model)
    full = METHODS[name]()(vit, _batch(x), target)
    for i in range(4):
        one = METHODS[name]()(
            vit, Batch(ids=(f"s{i}",), inputs=x[i : i + 1], labels=target[i : i + 1]), target[i : i + 1]
        )
        torch.testing.assert_close(one.maps, full.maps[i : i + 1], rtol=1e-10, atol=1e-13)
    assert not full.maps.requires_grad and instance_overrides(vit.model) == [] and hook_counts(vit.model) == hooks


@pytest.mark.parametrize("name", list(METHODS))
def test_bert_padded_batch_equals_unpadded_singles(bert, name: str) -> None:
    batch = bert.collate(text_samples(4))
    target = torch.tensor([2, 0, 1, 2])
    hooks = hook_counts(bert.model)
    full = METHODS[name]()(bert, batch, target)
    for i in range(4):
        one = METHODS[name]()(bert, unpadded_row(batch, i), target[i : i + 1])
        n = one.maps.shape[1]
        torch.testing.assert_close(one.maps[0], full.maps[i, :n], rtol=1e-9, atol=1e-13)
    assert hook_counts(bert.model) == hooks


def test_saliency_and_input_x_gradient_cost_one_forward(vit) -> None:
    """The predicted class and the logits come from Captum's own forward: no extra forward pass."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    calls = []
    handle = vit.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        for method in (Saliency(), InputXGradient()):
            calls.clear()
            out = method(vit, _batch(x), None)
            assert len(calls) == 1 and torch.equal(out.targets, vit.model(x).argmax(-1))
    finally:
        handle.remove()


def test_integrated_gradients_chunks_and_completeness(vit) -> None:
    """Any internal batch size gives the same attributions; with enough steps they add up to
    y_c(x) − y_c(black) (completeness, Sundararajan et al. 2017), which pins the black baseline."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 2])
    one = IntegratedGradients(n_steps=24, internal_batch_size=1)(vit, _batch(x), target)
    many = IntegratedGradients(n_steps=24, internal_batch_size=64)(vit, _batch(x), target)
    torch.testing.assert_close(one.maps, many.maps, rtol=1e-10, atol=1e-13)
    black = torch.full_like(x, -1.0)
    with torch.no_grad():
        delta = (vit.model(x) - vit.model(black)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(many.maps.sum(dim=(1, 2)), delta, rtol=1e-3, atol=1e-6)
    assert IntegratedGradients(n_steps=24).passes == 24


def test_smoothgrad_noise_belongs_to_the_sample(vit) -> None:
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64).expand(2, -1, -1, -1)
    state = torch.get_rng_state()
    out = SmoothGrad(nt_samples=4)(vit, _batch(x), torch.tensor([1, 1]))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert not torch.allclose(out.maps[0], out.maps[1])  # same image, other id: other noise
    again = SmoothGrad(nt_samples=4)(vit, Batch(ids=("s1",), inputs=x[:1], labels=x.new_zeros(1)), torch.tensor([1]))
    torch.testing.assert_close(again.maps[0], out.maps[1], rtol=0, atol=0)
    assert SmoothGrad(nt_samples=4, seed=1).noise_seed("s1") != SmoothGrad(nt_samples=4).noise_seed("s1")


# -- errors and configs ----------------------------------------------------------------------------------


def test_bad_arguments(vit) -> None:
    with pytest.raises(ValueError, match="n_steps"):
        IntegratedGradients(n_steps=0)
    with pytest.raises(ValueError, match="quadrature"):
        IntegratedGradients(method="simpson")
    with pytest.raises(ValueError, match="noise_level"):
        SmoothGrad(noise_level=0)
    with pytest.raises(ValueError, match="nt_samples"):
        SmoothGrad(nt_samples=2.5)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="out of range"):
        Saliency()(tiny_vit(), _batch(x), torch.tensor([11]))
    with pytest.raises(TypeError, match="image and text"):
        Saliency()(object(), _batch(x), None)


@pytest.mark.parametrize("config", list(METHODS))
def test_configs_instantiate(config: str) -> None:
    method = instantiate(OmegaConf.load(CONF / f"{config}.yaml"))
    assert method.name == config and method.modalities == {"image", "text"}
    if config == "integrated_gradients":
        assert (method.n_steps, method.method, method.internal_batch_size) == (50, "gausslegendre", 16)
    if config == "smoothgrad":
        assert (method.nt_samples, method.noise_level) == (25, 0.15)
