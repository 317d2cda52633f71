"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps";
Hedström et al., NeurIPS 2023 XAIA workshop, "Sanity Checks Revisited").

* **Cascading model parameter randomisation** (MPRT, Adebayo §3.1): the model's layers are
  re-initialised one after another from the top (the classifier head) down to the embeddings, and after
  each step the map is recomputed by the same method for the same target class; per layer the
  similarity between the original and the randomised map (:mod:`xaibench.metrics.similarity`: Spearman
  rank correlation of the maps, and SSIM of the min-max scaled maps). A method that explains the model has
  falling similarity as more layers are randomised; a method that passes the check ends near 0.
* **Random logit** (Adebayo §3 and Sixt et al. 2020, as Quantus' ``RandomLogit``): the map for a random
  other class, compared with the map of the explained class. Class-insensitive methods score 1.

Layers (``layers``): ``blocks`` (default) re-initialises the adapter's :meth:`layer_groups` (the head,
each transformer block, the embeddings), ``modules`` every module with ``reset_parameters`` one at a time
in reverse ``named_modules`` order (Quantus' MPRT with ``layer_order="top_down"``). A module is
re-initialised with its own ``reset_parameters`` (PyTorch's default initialisation), a bare parameter
(class token, position embedding) from N(0, 0.02²) (timm's and BERT's initialiser range). Group ``k`` is
randomised under torch seed ``seed + 1 + k`` (``layer_seeds="distinct"``) or ``seed + 1`` for every group
(``"same"``: Quantus' ``torch.manual_seed(seed + 1)`` before each layer, which reproduces its randomised
models). The random other class of a sample comes from a generator seeded by ``seed`` and its id, so the
results do not depend on the batch or the rank.

The randomisation works on a deep copy of the model (made once per job, its weights reset from the
original before each batch); the user's model is never changed: its weights hash is checked after every
batch (a change raises). Maps are compared as the method returns them (image token or pixel maps, 2-D;
text per-word scores over the scored words, 1-D). Costs per batch: ``len(layers) + 1`` attribution calls.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xaibench.core.heatmaps import min_max
from xaibench.core.text import batch_word_scores
from xaibench.core.types import Attribution, AttributionMethod, Batch, MetricRunner, ModelAdapter
from xaibench.metrics.road import sample_generator
from xaibench.metrics.similarity import spearman, ssim

SIMILARITIES = ("spearman", "ssim")


def randomise(items: Sequence[nn.Module | nn.Parameter], recurse: bool = True) -> None:
    """Re-initialise ``items`` in place (global torch RNG): modules through ``reset_parameters`` of every
    submodule that has one, other parameters (bare, or of submodules without it) from N(0, 0.02²).
    ``recurse=False``: only each module's own ``reset_parameters`` (Quantus' MPRT layers)."""
    covered: set[int] = set()
    with torch.no_grad():
        for item in items:
            if isinstance(item, nn.Parameter):
                item.normal_(0.0, 0.02)
                covered.add(id(item))
                continue
            if not recurse:
                item.reset_parameters()
                continue
            for module in item.modules():
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
                    covered.update(id(p) for p in module.parameters(recurse=False))
            for module in item.modules():
                for p in module.parameters(recurse=False):
                    if id(p) not in covered:
                        p.normal_(0.0, 0.02)
                        covered.add(id(p))


class Sanity(MetricRunner):
    """Cascading parameter randomisation and random-logit sanity checks (see the module docstring).

    Args:
        layers: ``blocks`` (the adapter's layer groups) or ``modules`` (Quantus' MPRT granularity).
        seed: seeds the randomisation and the random other class.
        layer_seeds: ``distinct`` (group ``k``: ``seed + 1 + k``) or ``same`` (every group ``seed + 1``).
        random_logit: also run the random-logit test.
    """

    name: ClassVar[str] = "sanity"
    needs_model: ClassVar[bool] = True
    needs_method: ClassVar[bool] = True
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "spearman_mean": False,
        "ssim_mean": False,
        "spearman_last": False,
        "ssim_last": False,
        "random_logit_spearman": False,
        "random_logit_ssim": False,
    }

    def __init__(
        self, layers: str = "blocks", seed: int = 42, layer_seeds: str = "distinct", random_logit: bool = True
    ) -> None:
        if layers not in ("blocks", "modules"):
            raise ValueError(f"sanity: layers={layers!r}; supported: 'blocks', 'modules'")
        if layer_seeds not in ("distinct", "same"):
            raise ValueError(f"sanity: layer_seeds={layer_seeds!r}; supported: 'distinct', 'same'")
        self.layers, self.seed, self.layer_seeds = layers, int(seed), layer_seeds
        self.random_logit = bool(random_logit)
        self.reset()

    # -- state --------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._names: list[str] | None = None  # the layers, top-down (known from the first batch's model)
        self._copy: ModelAdapter | None = None  # the working copy that gets randomised
        self._source: ModelAdapter | None = None
        self._hash: str | None = None  # the user's model's weights hash, checked after every batch
        # [layer, similarity, (Σ value, samples with a value)]; the random logit's; samples seen
        self._layer_sums = torch.zeros(0, len(SIMILARITIES), 2, dtype=torch.float64)
        self._logit_sums = torch.zeros(len(SIMILARITIES), 2, dtype=torch.float64)
        self._n = 0

    def state(self) -> dict[str, Any]:
        return {"layers": self._layer_sums.tolist(), "random_logit": self._logit_sums.tolist(), "n": self._n}

    def load_state(self, state: Mapping[str, Any]) -> None:
        layers = torch.as_tensor(state["layers"], dtype=torch.float64).reshape(-1, len(SIMILARITIES), 2)
        if self._names is not None and len(layers) not in (0, len(self._names)):
            raise ValueError(f"sanity state has {len(layers)} layers; this runner has {len(self._names)}")
        self._layer_sums = layers.clone()
        self._logit_sums = torch.as_tensor(state["random_logit"], dtype=torch.float64).reshape(len(SIMILARITIES), 2)
        self._n = int(state["n"])

    # -- helpers ------------------------------------------------------------------------------------
    def _groups(self, adapter: ModelAdapter) -> list[tuple[str, Sequence[nn.Module | nn.Parameter]]]:
        """The layers top-down (the order in which they are randomised, cumulatively)."""
        if self.layers == "modules":
            named = [(n or "model", m) for n, m in adapter.model.named_modules() if hasattr(m, "reset_parameters")]
            return [(n, [m]) for n, m in reversed(named)]
        return list(reversed(list(adapter.layer_groups())))

    def _working_copy(self, model: ModelAdapter) -> ModelAdapter:
        if self._copy is None or self._source is not model:
            self._copy = copy.copy(model)
            self._copy.model = copy.deepcopy(model.model)
            self._source = model
            self._hash = model.weights_hash()
        else:  # undo the previous batch's randomisation
            self._copy.model.load_state_dict(model.model.state_dict())
        return self._copy

    @staticmethod
    def _maps(batch: Batch, attribution: Attribution) -> list[np.ndarray]:
        """Per sample the map as compared: image maps 2-D, text per-word scores of the scored words 1-D."""
        if attribution.maps.dim() == 3:
            return list(attribution.maps.detach().to("cpu", torch.float64).nan_to_num(0.0).numpy())
        words = batch_word_scores(batch, attribution, "sanity", ()).to("cpu", torch.float64)
        return [w[~torch.isnan(w)].numpy() for w in words]

    @staticmethod
    def _similarities(original: list[np.ndarray], other: list[np.ndarray]) -> np.ndarray:
        """``[B, 2]`` Spearman and SSIM (of min-max scaled maps) per sample."""
        out = np.empty((len(original), len(SIMILARITIES)))
        for i, (a, b) in enumerate(zip(original, other, strict=True)):
            scaled = min_max(torch.from_numpy(np.stack([a, b]))).numpy()
            out[i] = (spearman(a, b), ssim(scaled[0], scaled[1]))
        return out

    def _other_classes(self, batch: Batch, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """A uniformly random class other than the target, per sample (seeded by ``seed`` and the id)."""
        out = []
        for sid, target in zip(batch.ids, targets.tolist(), strict=True):
            r = int(torch.randint(num_classes - 1, (1,), generator=sample_generator(self.seed, f"logit:{sid}")))
            out.append(r if r < target else r + 1)
        return torch.tensor(out, dtype=torch.long)

    # -- per batch ----------------------------------------------------------------------------------
    def update(
        self, batch: Batch, attribution: Attribution, model: ModelAdapter, method: AttributionMethod | None = None
    ) -> list[dict[str, Any]]:
        """Randomise layer by layer and recompute; one row per sample with ``spearman@<layer>``,
        ``ssim@<layer>`` and (random logit) ``random_logit_class``, ``random_logit_spearman``,
        ``random_logit_ssim``."""
        if method is None:
            raise ValueError(
                "sanity recomputes maps with the attribution method on randomised copies of the model; this run "
                "scores stored maps only (no method), so it cannot run the sanity checks"
            )
        work = self._working_copy(model)
        groups = self._groups(work)
        names = [name for name, _ in groups]
        if self._names is None:
            self._names = names
            self._layer_sums = torch.zeros(len(names), len(SIMILARITIES), 2, dtype=torch.float64)
        elif names != self._names:
            raise ValueError(f"sanity: the model's layers changed between batches ({len(names)} vs {len(self._names)})")
        targets = attribution.targets.detach()
        original = self._maps(batch, attribution)
        per_layer = np.empty((len(groups), len(batch), len(SIMILARITIES)))
        device = work.device
        for k, (_, items) in enumerate(groups):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(self.seed + 1 + (0 if self.layer_seeds == "same" else k))
                randomise(items, recurse=self.layers == "blocks")
            recomputed = method(work, batch, targets.to(device))
            per_layer[k] = self._similarities(original, self._maps(batch, recomputed))
        logit = np.full((len(batch), len(SIMILARITIES)), np.nan)
        others = None
        num_classes = int(attribution.logits.shape[-1])
        if self.random_logit and num_classes > 1:
            others = self._other_classes(batch, targets.cpu(), num_classes)
            flipped = method(model, batch, others.to(targets.device))
            logit = self._similarities(original, self._maps(batch, flipped))
        if model.weights_hash() != self._hash:
            raise RuntimeError(
                "sanity: the user's model weights changed during the sanity checks (a bug; please report)"
            )

        values = torch.from_numpy(per_layer)  # [L, B, S]
        ok = ~torch.isnan(values)
        self._layer_sums[..., 0] += torch.where(ok, values, 0.0).sum(dim=1)
        self._layer_sums[..., 1] += ok.sum(dim=1)
        lv = torch.from_numpy(logit)
        self._logit_sums[:, 0] += torch.where(~torch.isnan(lv), lv, 0.0).sum(dim=0)
        self._logit_sums[:, 1] += (~torch.isnan(lv)).sum(dim=0)
        self._n += len(batch)
        rows = []
        for b in range(len(batch)):
            row: dict[str, Any] = {}
            for k, name in enumerate(names):
                for s, sim in enumerate(SIMILARITIES):
                    row[f"{sim}@{name}"] = float(per_layer[k, b, s])
            if others is not None:
                row["random_logit_class"] = int(others[b])
                for s, sim in enumerate(SIMILARITIES):
                    row[f"random_logit_{sim}"] = float(logit[b, s])
            rows.append(row)
        return rows

    def compute(self) -> dict[str, Any]:
        """Per layer (top-down) the mean ``spearman@<layer>`` and ``ssim@<layer>``; ``{sim}_mean`` over
        layers, ``{sim}_last`` (everything randomised), the random-logit means, the layer order and ``n``."""
        names = self._names or []
        out: dict[str, Any] = {"n": self._n, "layers": list(names)}

        def mean(total: torch.Tensor) -> float:
            return float(total[0] / total[1]) if float(total[1]) > 0 else math.nan

        for s, sim in enumerate(SIMILARITIES):
            per = [mean(self._layer_sums[k, s]) for k in range(len(names))]
            for name, value in zip(names, per, strict=True):
                out[f"{sim}@{name}"] = value
            finite = [v for v in per if not math.isnan(v)]
            out[f"{sim}_mean"] = sum(finite) / len(finite) if finite else math.nan
            out[f"{sim}_last"] = per[-1] if per else math.nan
            out[f"random_logit_{sim}"] = mean(self._logit_sums[s])
            out[f"{sim}_undefined"] = int(self._n * len(names) - float(self._layer_sums[:, s, 1].sum()))
        return out
