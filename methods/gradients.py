"""Gradient baselines through Captum: saliency, input × gradient, integrated gradients, SmoothGrad.

Every XAI paper reports these; they are Captum's own implementations (``captum.attr``), called on the
adapter's forward, not re-implemented. What this module adds is the benchmark's conventions:

* **ViT** (pixels): Captum attributes the normalised input ``[B, 3, H, W]``; the map ``[B, H, W]``
  (level ``"pixels"``) reduces the channels as each method's paper visualises it: saliency and
  SmoothGrad ``Σ_c |·|`` (Simonyan et al. 2014 and Smilkov et al. 2017 show gradient magnitudes;
  Simonyan takes the channel maximum, we sum like the other methods), input × gradient and integrated
  gradients the signed ``Σ_c`` (Sundararajan et al. 2017 sum attributions over the colour channels, so
  that they add up to ``F(x) − F(baseline)``).
* **BERT** (word-pieces): Captum's layer variants on the word-piece embedding layer
  (``LayerGradientXActivation``, ``LayerIntegratedGradients``), the map ``Σ_hidden`` (|·| for saliency
  and SmoothGrad) per word-piece ``[B, n]`` with the ``[CLS]`` entry and padding 0 (the reference's
  BERT convention). Noise cannot be added to token ids, so SmoothGrad adds it to the word-piece
  embeddings and feeds them through the embedding layer (a scoped forward hook on it, the mechanism
  Captum's layer methods use).
* **Targets**: the given classes, or each sample's predicted class. Saliency and input × gradient
  take the logits from Captum's own forward (the explained logit of each input is what Captum
  differentiates), so they cost one forward and one backward; integrated gradients and SmoothGrad
  first run one plain forward for the logits and the classes.
* **Batching**: a batch of N gives the maps of N batches of one. Integrated gradients evaluates its
  ``n_steps`` points in chunks of ``internal_batch_size`` inputs per forward (at least one step of the
  whole batch), so memory stays that of a few saliency calls. SmoothGrad draws each sample's noise from
  a generator seeded by ``(seed, sample id)`` (:meth:`SmoothGrad.noise_seed`), so a sample's map does
  not depend on its batch; its noise level is ``σ = noise_level · (max x − min x)`` of that sample's
  input (Smilkov et al.: 15 % of the input range), and its ``nt_samples`` noisy copies go through the
  model ``nt_samples_batch_size`` at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch

from xaibench.core.types import (
    Attribution,
    AttributionMethod,
    Batch,
    ImageModelAdapter,
    ModelAdapter,
    TextModelAdapter,
)
from xaibench.methods.attention import select_logit

__all__ = ["InputXGradient", "IntegratedGradients", "Saliency", "SmoothGrad"]

Reduction = Literal["abs", "signed"]


class _SelectedLogit:
    """A Captum ``forward_func`` returning the explained logit ``[B]`` of each input, remembering the logits.

    With ``target=None`` the class is each input's argmax; Captum then needs no ``target`` (one scalar
    per example) and its single forward also gives the method's logits.
    """

    def __init__(self, forward: Callable[..., torch.Tensor], target: torch.Tensor | None) -> None:
        self.forward, self.target = forward, target
        self.logits: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None

    def __call__(self, *args: Any) -> torch.Tensor:
        logits = self.forward(*args)
        targets, _ = select_logit(logits, self.target)
        self.logits, self.targets = logits.detach(), targets
        return logits.gather(1, targets[:, None])[:, 0]


def _text_inputs(batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], list[str]]:
    inputs = batch.inputs
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError("gradient methods on text need batch.inputs as a mapping with 'input_ids' (HFBert.collate)")
    names = [k for k in ("attention_mask", "token_type_ids") if k in inputs]
    return inputs["input_ids"], tuple(inputs[k] for k in names), names


class CaptumMethod(AttributionMethod):
    """Base of the Captum baselines: dispatch on the modality, reduce the channels, build the map."""

    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    class_sensitive: ClassVar[bool] = True
    #: how the channels (ViT) or hidden units (BERT) are summed
    reduce: ClassVar[Reduction] = "signed"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    # -- per family ----------------------------------------------------------------------------------
    def _image(
        self, model: ImageModelAdapter, x: torch.Tensor, target: torch.Tensor | None, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(attributions [B, 3, H, W], logits [B, C], targets [B])``."""
        raise NotImplementedError

    def _text(
        self,
        model: TextModelAdapter,
        forward: Callable[..., torch.Tensor],
        ids: torch.Tensor,
        extra: tuple[torch.Tensor, ...],
        target: torch.Tensor | None,
        batch: Batch,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(attributions [B, n, D] at the word-piece embeddings, logits, targets)``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def _reduce(self, attr: torch.Tensor, dim: int) -> torch.Tensor:
        return (attr.abs() if self.reduce == "abs" else attr).sum(dim=dim)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        if isinstance(model, ImageModelAdapter):
            x = batch.inputs
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise TypeError("gradient methods on images need batch.inputs as a [B, 3, H, W] tensor")
            attr, logits, targets = self._image(model, x.detach(), target, batch)
            maps, level = self._reduce(attr.detach(), 1), "pixels"
        elif isinstance(model, TextModelAdapter):
            ids, extra, names = _text_inputs(batch)

            def forward(ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
                return model.logits({"input_ids": ids, **dict(zip(names, rest, strict=True))})

            attr, logits, targets = self._text(model, forward, ids, extra, target, batch)
            maps, level = model.token_map(self._reduce(attr.detach(), -1), _real(model, batch), cls="zero"), "tokens"
        else:
            raise TypeError(f"{self.name} supports image and text model adapters; got {type(model).__name__}")
        return Attribution(maps=maps, targets=targets.detach(), logits=logits.detach(), level=level)


def _real(model: TextModelAdapter, batch: Batch) -> torch.Tensor:
    """``[B, n]`` bool, True at the real (non-padding) word-pieces."""
    mask = model.token_mask(batch.inputs)
    return torch.ones_like(batch.inputs["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


def _word_embeddings(model: TextModelAdapter) -> torch.nn.Module:
    """The word-piece embedding layer of the stock Hugging Face model (``get_input_embeddings``)."""
    return model.model.get_input_embeddings()


class Saliency(CaptumMethod):
    """Saliency (Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop): ``|∂y_c/∂x|`` (``captum.attr.Saliency``).

    BERT: ``|∂y_c/∂e|`` at the word-piece embeddings (``LayerGradientXActivation`` with
    ``multiply_by_inputs=False``), summed over the hidden units.
    """

    name: ClassVar[str] = "saliency"
    reduce: ClassVar[Reduction] = "abs"

    def _image(self, model, x, target, batch):
        from captum.attr import Saliency as CaptumSaliency

        fwd = _SelectedLogit(model.logits, target)
        attr = CaptumSaliency(fwd).attribute(x.requires_grad_(True), abs=True)
        return attr, fwd.logits, fwd.targets

    def _text(self, model, forward, ids, extra, target, batch):
        from captum.attr import LayerGradientXActivation

        fwd = _SelectedLogit(forward, target)
        method = LayerGradientXActivation(fwd, _word_embeddings(model), multiply_by_inputs=False)
        attr = method.attribute(ids, additional_forward_args=extra)
        return attr, fwd.logits, fwd.targets


class InputXGradient(CaptumMethod):
    """Input × gradient (Shrikumar et al. 2016; Ancona et al., ICLR 2018): ``x ⊙ ∂y_c/∂x``
    (``captum.attr.InputXGradient``); BERT: ``e ⊙ ∂y_c/∂e`` (``LayerGradientXActivation``)."""

    name: ClassVar[str] = "input_x_gradient"

    def _image(self, model, x, target, batch):
        from captum.attr import InputXGradient as CaptumInputXGradient

        fwd = _SelectedLogit(model.logits, target)
        return CaptumInputXGradient(fwd).attribute(x.requires_grad_(True)), fwd.logits, fwd.targets

    def _text(self, model, forward, ids, extra, target, batch):
        from captum.attr import LayerGradientXActivation

        fwd = _SelectedLogit(forward, target)
        attr = LayerGradientXActivation(fwd, _word_embeddings(model)).attribute(ids, additional_forward_args=extra)
        return attr, fwd.logits, fwd.targets


def _check_count(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return value


def _clean_forward(
    forward: Callable[..., torch.Tensor], args: tuple, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, C]`` and explained classes ``[B]`` of the unperturbed inputs (one plain forward)."""
    with torch.no_grad():
        logits = forward(*args)
    targets, _ = select_logit(logits, target)
    return logits, targets


def _reference_ids(model: TextModelAdapter, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The integrated-gradients baseline for text: ``[PAD]`` (the model config's ``pad_token_id``) at every
    word-piece between the first and the last real one (``[CLS] … [SEP]`` as the adapter's ``collate``
    frames a document), which are kept, as is the padding (Captum's BERT tutorial convention)."""
    pad = model.model.config.pad_token_id
    if pad is None:
        raise ValueError(f"{model.name} has no pad_token_id in its config: no [PAD] baseline for integrated gradients")
    position = torch.arange(ids.shape[1], device=ids.device)[None, :]
    last = real.sum(dim=1, keepdim=True) - 1
    inner = real & (position > 0) & (position < last)
    return torch.where(inner, torch.full_like(ids, pad), ids)


class IntegratedGradients(CaptumMethod):
    """Integrated gradients (Sundararajan, Taly & Yan, ICML 2017, Eq. 1) with ``captum.attr.IntegratedGradients``.

    ``(x − x') ⊙ ∫₀¹ ∂y_c/∂x (x' + α(x − x')) dα`` over ``n_steps`` points (Captum's quadrature
    ``method``). ViT: the baseline ``x'`` is the black image (pixel value 0 through the adapter's
    normalisation). BERT: ``LayerIntegratedGradients`` on the word-piece embeddings, the baseline the
    ``[PAD]`` embedding at every word-piece but ``[CLS]`` / ``[SEP]`` (Captum's BERT tutorial).

    Args:
        n_steps: integration points.
        method: Captum's quadrature (``gausslegendre``, ``riemann_trapezoid``, ``riemann_left``, ...).
        internal_batch_size: inputs per forward pass; Captum evaluates ``internal_batch_size // B``
            steps of the whole batch at a time (at least one).
    """

    name: ClassVar[str] = "integrated_gradients"

    def __init__(self, n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: int = 16) -> None:
        methods = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
        if method not in methods:
            raise ValueError(f"method must be one of {methods} (Captum's quadratures); got {method!r}")
        self.n_steps = _check_count("n_steps", n_steps)
        self.method = method
        self.internal_batch_size = _check_count("internal_batch_size", internal_batch_size)

    @property
    def passes(self) -> int:
        return self.n_steps

    def _options(self, targets: torch.Tensor) -> dict[str, Any]:
        return {
            "target": targets,
            "n_steps": self.n_steps,
            "method": self.method,
            "internal_batch_size": max(self.internal_batch_size, len(targets)),
        }

    def _image(self, model, x, target, batch):
        from captum.attr import IntegratedGradients as CaptumIG

        logits, targets = _clean_forward(model.logits, (x,), target)
        black = model.normalize(torch.zeros(1, *x.shape[1:])).to(device=x.device, dtype=x.dtype)
        attr = CaptumIG(model.logits).attribute(x, baselines=black, **self._options(targets))
        return attr, logits, targets

    def _text(self, model, forward, ids, extra, target, batch):
        from captum.attr import LayerIntegratedGradients

        logits, targets = _clean_forward(forward, (ids, *extra), target)
        method = LayerIntegratedGradients(forward, _word_embeddings(model))
        attr = method.attribute(
            ids,
            baselines=_reference_ids(model, ids, _real(model, batch)),
            additional_forward_args=extra,
            **self._options(targets),
        )
        return attr, logits, targets


class _EmbeddingsForward:
    """``forward(e, ids, *rest)``: the model's logits with the word-piece embedding layer's output replaced
    by ``e`` (a forward hook on the layer, removed after the call)."""

    def __init__(self, forward: Callable[..., torch.Tensor], layer: torch.nn.Module) -> None:
        self.forward, self.layer = forward, layer

    def __call__(self, e: torch.Tensor, ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        handle = self.layer.register_forward_hook(lambda module, args, out: e)
        try:
            return self.forward(ids, *rest)
        finally:
            handle.remove()


class SmoothGrad(CaptumMethod):
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies (``captum.attr.NoiseTunnel``).

    ``1/N Σ_k |∂y_c/∂x (x + ε_k)|`` with ``ε_k ~ N(0, σ²)``, ``σ = noise_level · (max x − min x)`` per
    sample, ``N = nt_samples``. ViT: noise on the normalised pixels; BERT: on the word-piece embeddings
    (of the sample's real word-pieces). The noise of sample ``i`` comes from a generator seeded with
    :meth:`noise_seed` of its id (the global generator is restored afterwards).

    Args:
        nt_samples: noisy copies per sample.
        noise_level: ``σ`` as a fraction of the sample's input range (0.15: 15 %).
        nt_samples_batch_size: noisy copies per forward pass (``None``: all at once).
        seed: mixed into every sample's noise seed.
    """

    name: ClassVar[str] = "smoothgrad"
    reduce: ClassVar[Reduction] = "abs"

    def __init__(
        self, nt_samples: int = 25, noise_level: float = 0.15, nt_samples_batch_size: int | None = None, seed: int = 0
    ) -> None:
        self.nt_samples = _check_count("nt_samples", nt_samples)
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or not noise_level > 0:
            raise ValueError(f"noise_level must be a positive fraction of the input range; got {noise_level!r}")
        self.noise_level = float(noise_level)
        self.nt_samples_batch_size = (
            None if nt_samples_batch_size is None else _check_count("nt_samples_batch_size", nt_samples_batch_size)
        )
        self.seed = int(seed)

    @property
    def passes(self) -> int:
        return self.nt_samples

    def noise_seed(self, sample_id: str) -> int:
        """The seed of one sample's noise: from ``(seed, sample id)`` alone, never from its batch."""
        digest = hashlib.sha256(f"smoothgrad:{self.seed}:{sample_id}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def _tunnel(
        self,
        forward: Callable[..., torch.Tensor],
        x: torch.Tensor,
        target: torch.Tensor,
        sample_id: str,
        extra: tuple = (),
    ) -> torch.Tensor:
        from captum.attr import NoiseTunnel
        from captum.attr import Saliency as CaptumSaliency

        sigma = self.noise_level * float(x.max() - x.min())
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.noise_seed(sample_id))
            return NoiseTunnel(CaptumSaliency(forward)).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=self.nt_samples,
                nt_samples_batch_size=self.nt_samples_batch_size,
                stdevs=sigma,
                target=target,
                additional_forward_args=extra or None,
                abs=True,
            )

    def _image(self, model, x, target, batch):
        logits, targets = _clean_forward(model.logits, (x,), target)
        attr = torch.cat(
            [self._tunnel(model.logits, x[i : i + 1], targets[i : i + 1], batch.ids[i]) for i in range(len(x))]
        )
        return attr, logits, targets

    def _text(self, model, forward, ids, extra, target, batch):
        logits, targets = _clean_forward(forward, (ids, *extra), target)
        layer = _word_embeddings(model)
        mask = _real(model, batch)
        with torch.no_grad():
            embedded = layer(ids)
        attr = torch.zeros_like(embedded)
        for i in range(len(ids)):
            n = int(mask[i].sum())  # the sample alone, without the batch's padding
            rest = (ids[i : i + 1, :n], *(t[i : i + 1, :n] for t in extra))
            attr[i, :n] = self._tunnel(
                _EmbeddingsForward(forward, layer), embedded[i : i + 1, :n], targets[i : i + 1], batch.ids[i], rest
            )[0]
        return attr, logits, targets
