"""Localisation of a map against ground-truth evidence: the pointing game, relevance mass and rank.

* :class:`PointingGame` (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop"; the
  protocol of TorchRay's benchmark): a **hit** when the map's maximum lies within ``tolerance`` pixels
  of the evidence mask (TorchRay's acceptance disk, distance ``< tolerance``; 15 px at 224 × 224, scaled
  with ``sqrt(H·W) / 224``). Beside it the **energy-based pointing game** (Wang et al., CVPR-W 2020,
  Score-CAM §4.2): the share of the min-max scaled map's mass inside the mask, ``Σ_{mask} h / Σ h``.
* :class:`RelevanceMass` (Arras, Osman & Samek, Information Fusion 2022, "CLEVR-XAI", §4.2, relevance
  mass accuracy): the share of **positive** relevance inside the mask, ``Σ_{mask} R⁺ / Σ R⁺``.
* :class:`RelevanceRank` (ibid., relevance rank accuracy): with ``K = |mask|``, the share of the ``K``
  highest-relevance positions that lie inside the mask.

Images score the map upsampled to the image (bilinear, :func:`xaibench.core.heatmaps.upsample`) against
``batch.masks``; text scores per-word scores (max over a word's pieces) against the rationale words
(ERASER evidence), with the word tolerance ``text_tolerance`` (a hit within that many words; 0: the word
itself). Words without a score (truncated away) take no part: they are neither pointed at nor counted.

Ties and degenerate maps (one policy, :func:`pointing_hits`, :func:`mass_share`, :func:`rank_share`): tied
values count as the **expected score under a uniformly random tie break**. So the pointing hit is the share
of the tied maxima inside the acceptance region, the rank counts the tied values at the ``K``-th place by
the share of them inside the mask, and a map without positive relevance (all zero, or negative) spreads
its mass evenly. A constant map therefore scores chance on each metric (the mask's share of the image,
or of the acceptance region for the hit) and is counted in ``constant_maps``. A sample without evidence
(empty mask or rationale) has no score (NaN in ``scores.csv``), is counted in ``empty_evidence`` and is
left out of the means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from xaibench.core.heatmaps import min_max, upsample
from xaibench.core.text import batch_word_scores
from xaibench.core.types import Attribution, Batch, MetricRunner, ModelAdapter
from xaibench.metrics.sums import TensorSums

#: the image side TorchRay's 15-pixel tolerance refers to
REFERENCE_SIDE = 224


def pointing_hits(maps: torch.Tensor, accept: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pointing-game hits, ties counted as the expected hit of a random tie break.

    Args:
        maps: ``[B, N]`` scores (NaN allowed where not ``valid``).
        accept: ``[B, N]`` bool, positions where the pointed position counts as a hit.
        valid: ``[B, N]`` bool, the positions that may be pointed at.

    Returns:
        ``[B]`` float64: the share of the valid maxima that lie in ``accept`` (1 or 0 for a unique maximum).
    """
    scores = torch.where(valid, maps, torch.full_like(maps, -torch.inf))
    top = scores.amax(dim=1, keepdim=True)
    tied = (scores == top) & valid
    return (tied & accept).sum(dim=1).double() / tied.sum(dim=1).clamp(min=1).double()


def mass_share(weights: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``Σ_{mask} w / Σ w`` over the valid positions of non-negative ``weights`` ``[B, N]``; a sample whose
    weights sum to 0 spreads them evenly (its share is ``|mask| / N``)."""
    w = torch.where(valid, weights, torch.zeros_like(weights)).double()
    total = w.sum(dim=1)
    inside = (w * (mask & valid)).sum(dim=1)
    chance = (mask & valid).sum(dim=1).double() / valid.sum(dim=1).clamp(min=1).double()
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), chance)


def rank_share(maps: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Relevance rank accuracy: the share of the top ``K = |mask|`` valid positions inside the mask.

    Values tied with the ``K``-th largest fill the remaining places by the share of them inside the mask
    (the expectation over random tie breaks). ``K = 0`` gives NaN.
    """
    mask = mask & valid
    k = mask.sum(dim=1)
    scores = torch.where(valid, maps.double(), torch.full_like(maps, -torch.inf, dtype=torch.float64))
    ordered = scores.sort(dim=1, descending=True).values
    kth = ordered.gather(1, (k - 1).clamp(min=0)[:, None])
    above = (scores > kth) & valid
    tied = (scores == kth) & valid
    n_above = above.sum(dim=1).double()
    in_tied = (tied & mask).sum(dim=1).double() / tied.sum(dim=1).clamp(min=1).double()
    count = (above & mask).sum(dim=1).double() + (k.double() - n_above) * in_tied
    return torch.where(k > 0, count / k.clamp(min=1).double(), torch.full_like(count, torch.nan))


def acceptance_region(masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Positions within Euclidean distance ``< tolerance`` of an evidence position (TorchRay's disk), per
    sample: ``[B, *S]`` bool from ``[B, *S]`` masks (images ``S = (H, W)``, text ``S = (W,)``)."""
    from scipy.ndimage import distance_transform_edt

    out = np.zeros(tuple(masks.shape), dtype=bool)
    for i, m in enumerate(masks.cpu().numpy().astype(bool)):
        if m.any():
            out[i] = distance_transform_edt(~m) < tolerance if tolerance > 0 else m
    return torch.from_numpy(out)


class Evidence:
    """A batch's maps and evidence as flat ``[B, N]`` tensors (float64 maps, bool masks), on CPU.

    Attributes:
        maps: images: the maps upsampled to ``(H, W)``; text: per-word scores (NaN = no score).
        masks: the evidence positions (mask pixels, rationale words).
        valid: positions that take part (every pixel; the scored words of each document).
        accept: the pointing game's acceptance region (see :func:`acceptance_region`).
    """

    def __init__(self, batch: Batch, attribution: Attribution, metric: str, tolerance: float, text_tol: float):
        if batch.images is not None and batch.masks is None:
            raise ValueError(f"{metric} needs evidence masks on images (a dataset that provides 'mask'); got none")
        if len(attribution.maps) != len(batch):
            raise ValueError(f"{metric}: {len(attribution.maps)} maps for a batch of {len(batch)} samples")
        if batch.masks is not None:
            size = tuple(batch.masks.shape[-2:])
            # a NaN map (the reference's constant Grad-CAM, constant_map=nan) is the constant map it stands for
            maps = upsample(attribution.maps.detach().to("cpu", torch.float64).nan_to_num(0.0), attribution.level, size)
            masks = batch.masks.to("cpu") > 0
            side = float(np.sqrt(size[0] * size[1]))
            self.accept = acceptance_region(masks, tolerance * side / REFERENCE_SIDE).flatten(1)
            self.maps, self.masks = maps.flatten(1), masks.flatten(1)
            self.valid = torch.ones_like(self.masks)
        else:
            scores = batch_word_scores(batch, attribution, metric, ("rationales",)).to("cpu", torch.float64)
            masks = torch.zeros(scores.shape, dtype=torch.bool)
            for i, spans in enumerate(batch.extras["rationales"]):
                if spans is None:
                    raise ValueError(f"sample {batch.ids[i]} has no rationale; {metric} needs evidence spans")
                for start, end in spans:
                    masks[i, int(start) : int(end)] = True
            self.maps, self.valid = scores, ~torch.isnan(scores)
            self.masks = masks & self.valid
            self.accept = acceptance_region(self.masks, text_tol + 0.5) if text_tol >= 0 else self.masks
        self.empty = ~self.masks.any(dim=1)
        lo = torch.where(self.valid, self.maps, torch.full_like(self.maps, torch.inf)).amin(dim=1, keepdim=True)
        hi = torch.where(self.valid, self.maps, torch.full_like(self.maps, -torch.inf)).amax(dim=1, keepdim=True)
        self.constant = ~(hi > lo)[:, 0]
        # unscored words take the minimum, so the one min-max (core.heatmaps) scales over the scored ones
        self._filled = torch.where(self.valid, self.maps, torch.where(torch.isfinite(lo), lo, 0.0))

    def scaled(self) -> torch.Tensor:
        """``[B, N]`` the maps min-max scaled to [0, 1] over their valid positions (a constant map: 0)."""
        return torch.where(self.valid, min_max(self._filled, 0.0), 0.0)


class _Localisation(TensorSums, MetricRunner):
    """Shared state: per score column the sum over samples with evidence, then the sample counts."""

    requires_by_modality: ClassVar[Mapping[str, frozenset[str]]] = {
        "image": frozenset({"mask"}),
        "text": frozenset({"rationale"}),
    }
    columns: ClassVar[tuple[str, ...]]

    def __init__(self, tolerance: float = 15.0, text_tolerance: int = 0) -> None:
        if float(tolerance) < 0 or int(text_tolerance) < 0:
            raise ValueError(
                f"{self.name}: tolerance ({tolerance} px) and text_tolerance ({text_tolerance} words) must be >= 0"
            )
        self.tolerance = float(tolerance)
        self.text_tolerance = int(text_tolerance)
        self.reset()

    def reset(self) -> None:
        # Σ per column, then: samples scored, samples without evidence, constant maps among the scored
        self._sums = torch.zeros(len(self.columns) + 3, dtype=torch.float64)

    def scores(self, ev: Evidence) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """One row per sample with the runner's ``columns`` (NaN without evidence) and ``constant_map``.

        Args:
            batch: images with ``masks`` ``[B, H, W]``, or text with ``extras["rationales"]``.
            attribution: ``[B, gh, gw]`` / ``[B, H, W]`` image maps or ``[B, T]`` word-piece maps.
        """
        ev = Evidence(batch, attribution, self.name, self.tolerance, self.text_tolerance)
        values = self.scores(ev)
        scored = ~ev.empty
        table = torch.stack([torch.where(scored, values[c], torch.nan) for c in self.columns], dim=1)
        self._sums[: len(self.columns)] += torch.nan_to_num(table, nan=0.0).sum(dim=0)
        self._sums[-3] += scored.sum()
        self._sums[-2] += ev.empty.sum()
        self._sums[-1] += (ev.constant & scored).sum()
        return [
            {**{c: float(table[i, j]) for j, c in enumerate(self.columns)}, "constant_map": bool(ev.constant[i])}
            for i in range(len(batch))
        ]

    def compute(self) -> dict[str, Any]:
        n = float(self._sums[-3])
        out: dict[str, Any] = {c: float(self._sums[j]) / n if n else float("nan") for j, c in enumerate(self.columns)}
        out.update(n=int(n), empty_evidence=int(self._sums[-2]), constant_maps=int(self._sums[-1]))
        return out


class PointingGame(_Localisation):
    """The pointing game (hit of the map's maximum, with tolerance) and the energy-based pointing game.

    Args:
        tolerance: acceptance radius in pixels at 224 × 224 (TorchRay: 15), scaled with ``sqrt(H·W) / 224``.
        text_tolerance: a text hit may be this many words away from a rationale word (0: on it).
    """

    name: ClassVar[str] = "pointing_game"
    columns: ClassVar[tuple[str, ...]] = ("hit", "energy")
    higher_is_better: ClassVar[Mapping[str, bool]] = {"hit": True, "energy": True}

    def scores(self, ev: Evidence) -> dict[str, torch.Tensor]:
        return {
            "hit": pointing_hits(ev.maps, ev.accept, ev.valid),
            "energy": mass_share(ev.scaled(), ev.masks, ev.valid),
        }


class RelevanceMass(_Localisation):
    """Relevance mass accuracy: the share of positive relevance inside the evidence (CLEVR-XAI)."""

    name: ClassVar[str] = "relevance_mass"
    columns: ClassVar[tuple[str, ...]] = ("mass",)
    higher_is_better: ClassVar[Mapping[str, bool]] = {"mass": True}

    def scores(self, ev: Evidence) -> dict[str, torch.Tensor]:
        return {"mass": mass_share(ev.maps.nan_to_num(0.0).clamp(min=0.0), ev.masks, ev.valid)}


class RelevanceRank(_Localisation):
    """Relevance rank accuracy: the share of the top-|evidence| positions inside the evidence (CLEVR-XAI)."""

    name: ClassVar[str] = "relevance_rank"
    columns: ClassVar[tuple[str, ...]] = ("rank",)
    higher_is_better: ClassVar[Mapping[str, bool]] = {"rank": True}

    def scores(self, ev: Evidence) -> dict[str, torch.Tensor]:
        return {"rank": rank_share(ev.maps, ev.masks, ev.valid)}
