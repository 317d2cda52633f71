"""Class sensitivity: does the map of a class point at that class's evidence, and not at the other's?

On samples with several labelled classes (``synthetic_pairs``: two objects; ``synthetic_text_pairs``: two
topics), explained once per class (``target=each``), for the map ``m_a`` of class ``a``:

* ``pointing_a`` = 1 when the maximum of ``m_a`` lies in ``a``'s evidence (pointing game, Zhang et al.,
  ECCV 2016), else 0; a constant map points nowhere (0);
* ``mass_gap_a`` = share of the positive mass of ``m_a`` in ``a``'s evidence − mean share in the other
  classes' evidence (relevance mass accuracy, Arras, Osman & Samek, Information Fusion 2022, taken as a
  difference between the classes), in ``[-1, 1]``;
* ``both_point`` = 1 for a sample whose maps all point at their own class's evidence.

Reported: mean pointing and mean mass gap over the explained samples, and the share of samples where every
map points at its own evidence. A method whose map does not depend on the class (rollout, raw attention)
gives every class of a sample the same map ``m``: the gaps of a two-class sample are ``s_a − s_b`` and
``s_b − s_a``, which cancel exactly, so its mean mass gap is exactly 0, and ``m``'s one maximum lies in at
most one of the two disjoint evidence regions, so its mean pointing is at most 0.5. A class-specific
method can reach 1 on both.

Images: token maps are upsampled bilinearly to the masks (:func:`xaibench.core.heatmaps.upsample`, no
min-max, which would move the positive mass); the maximum is the first maximal pixel. Text: per-word
scores (the max over a word's word-pieces, :func:`xaibench.core.text.word_scores`) over the words with a
score; the evidence is the class's rationale words. Sums are per sample (the gaps of one sample are added
first), so shards merge exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from xaibench.core.heatmaps import upsample
from xaibench.core.text import batch_word_scores
from xaibench.core.types import Attribution, Batch, MetricRunner, ModelAdapter
from xaibench.metrics.sums import TensorSums

#: entries of the sum vector
_SUMS = ("n", "pointing", "mass_own", "mass_other", "mass_gap", "samples", "both_point", "single", "nan_maps")


def item_scores(values: torch.Tensor, own: torch.Tensor, others: torch.Tensor) -> tuple[float, float, float]:
    """Pointing and mass shares of one map.

    Args:
        values: ``[N]`` the map over pixels or words (NaN: no score, never the maximum, no mass).
        own: ``[N]`` bool, the explained class's evidence.
        others: ``[K-1, N]`` bool, the other classes' evidence (``K-1 >= 1``).

    Returns:
        ``(pointing, share_own, share_other)``: 1.0 or 0.0; the share of the positive mass in ``own``; the
        mean share in each of ``others`` (shares are 0 for a map with no positive mass).
    """
    scored = ~torch.isnan(values)
    v = torch.where(scored, values, torch.zeros_like(values)).double()
    pointing = 0.0
    if bool(scored.any()):
        lo = v[scored].min()
        hi = v[scored].max()
        if bool(hi > lo):
            top = int(torch.nonzero(scored & (v == hi))[0, 0])  # the first maximal entry
            pointing = float(bool(own[top]))
    positive = v.clamp(min=0)
    total = float(positive.sum())
    if total <= 0:
        return pointing, 0.0, 0.0
    share_own = float(positive[own].sum()) / total
    share_other = sum(float(positive[o].sum()) / total for o in others) / len(others)
    return pointing, share_own, share_other


def _evidence(batch: Batch, attribution: Attribution) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per explained sample ``(values [N], own [N] bool, others [K-1, N] bool)`` over pixels or words."""
    extras = batch.extras
    if batch.images is not None:
        if batch.masks is None or "other_masks" not in extras:
            raise ValueError(
                "class_sensitivity needs a mask per class (a dataset providing 'class_evidence', e.g. "
                "synthetic_pairs) explained with target=each"
            )
        masks = batch.masks.to("cpu")
        maps = upsample(attribution.maps.detach().to("cpu", torch.float64), attribution.level, masks.shape[-2:])
        return [
            (maps[i].reshape(-1), masks[i].reshape(-1) > 0, extras["other_masks"][i].to("cpu").flatten(1) > 0)
            for i in range(len(batch))
        ]
    if "other_rationales" not in extras:
        raise ValueError(
            "class_sensitivity needs the evidence spans of every class (a dataset providing 'class_evidence', "
            "e.g. synthetic_text_pairs) explained with target=each"
        )
    scores = batch_word_scores(batch, attribution, "class_sensitivity", ("rationales",)).to("cpu")
    out = []
    for i in range(len(batch)):
        n = int(extras["num_words"][i])
        others = [_word_flags(spans, n) for spans in extras["other_rationales"][i]]
        stacked = torch.stack(others) if others else torch.zeros(0, n, dtype=torch.bool)
        out.append((scores[i, :n], _word_flags(extras["rationales"][i] or (), n), stacked))
    return out


def _word_flags(spans: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """``[n]`` bool, True on the words of ``(start, end)`` spans."""
    flags = torch.zeros(n, dtype=torch.bool)
    for start, end in spans:
        flags[int(start) : int(end)] = True
    return flags


class ClassSensitivity(TensorSums, MetricRunner):
    """Pointing and mass gap of each class's map against its own and the other classes' evidence.

    One row per explained sample: ``pointing``, ``mass_own``, ``mass_other``, ``mass_gap`` and
    ``both_point`` (the sample's value, on each of its rows); NaN for a sample with a single class (there
    is nothing to tell apart; counted in ``single``).
    """

    name: ClassVar[str] = "class_sensitivity"
    requires: ClassVar[frozenset[str]] = frozenset({"class_evidence"})
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    target_modes: ClassVar[frozenset[str]] = frozenset({"each"})
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "pointing": True,
        "mass_gap": True,
        "both_point": True,
        "mass_own": True,
        "mass_other": False,
    }

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64)

    def _add(self, key: str, value: float) -> None:
        self._sums[_SUMS.index(key)] += value

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """Score each explained sample; the maps of one sample are in the same batch (``target=each``).

        Args:
            batch: image batch with ``masks`` ``[B, H, W]`` (each row's own class) and
                ``extras["other_masks"]``, or text batch with ``extras["rationales"]`` and
                ``extras["other_rationales"]``; ``extras["samples"]`` names each row's sample.
            attribution: maps ``[B, gh, gw]`` / ``[B, H, W]`` (images) or ``[B, T]`` (text).
        """
        groups: dict[str, list[int]] = {}
        for i, sample in enumerate(batch.extras.get("samples") or batch.ids):
            groups.setdefault(sample, []).append(i)
        items = _evidence(batch, attribution)
        nan = float("nan")
        rows: list[dict[str, Any]] = [{} for _ in range(len(batch))]
        for members in groups.values():
            gap_sum, complete, all_point = 0.0, True, True
            for i in members:
                values, own, others = items[i]
                if not len(others):
                    rows[i] = {k: nan for k in ("pointing", "mass_own", "mass_other", "mass_gap", "both_point")}
                    rows[i]["nan_map"] = False
                    self._add("single", 1)
                    complete = False
                    continue
                complete = complete and len(members) == len(others) + 1
                has_nan = bool(torch.isnan(values).any()) and batch.images is not None
                if has_nan:  # a NaN image map (the reference's constant Grad-CAM) points nowhere, has no mass
                    values = torch.zeros_like(values)
                pointing, share_own, share_other = item_scores(values, own, others)
                gap = share_own - share_other
                gap_sum += gap
                all_point = all_point and pointing == 1.0
                for key, value in (("n", 1), ("pointing", pointing), ("mass_own", share_own)):
                    self._add(key, value)
                self._add("mass_other", share_other)
                self._add("nan_maps", int(has_nan))
                rows[i] = {"pointing": pointing, "mass_own": share_own, "mass_other": share_other, "mass_gap": gap}
                rows[i]["nan_map"] = has_nan
            self._add("mass_gap", gap_sum)  # a sample's gaps first: a class-agnostic map sums to exactly 0
            if complete:
                self._add("samples", 1)
                self._add("both_point", int(all_point))
            for i in members:
                if "both_point" not in rows[i]:
                    rows[i]["both_point"] = float(all_point) if complete else nan
        return rows

    def compute(self) -> dict[str, Any]:
        """``pointing``, ``mass_gap``, ``mass_own``, ``mass_other`` (means over explained samples),
        ``both_point`` (share of samples), ``n``, ``n_samples``, ``single``, ``nan_maps``."""
        s = dict(zip(_SUMS, self._sums.tolist(), strict=True))
        n, samples = s["n"], s["samples"]
        mean = (lambda x: x / n) if n else (lambda x: float("nan"))
        return {
            "pointing": mean(s["pointing"]),
            "mass_gap": mean(s["mass_gap"]),
            "mass_own": mean(s["mass_own"]),
            "mass_other": mean(s["mass_other"]),
            "both_point": s["both_point"] / samples if samples else float("nan"),
            "n": int(n),
            "n_samples": int(samples),
            "single": int(s["single"]),
            "nan_maps": int(s["nan_maps"]),
        }
