"""Class sensitivity: does the map of a class point at that class's evidence, and not at the other's?

On samples with several labelled classes (``synthetic_pairs``: two objects; ``synthetic_text_pairs``: two
topics), explained once per class (``target=each``), for the map ``m_a`` of class ``a``:

* ``pointing_a`` = 1 when the maximum of ``m_a`` lies in ``a``'s evidence (the pointing game of Zhang et al.,
  ECCV 2016, without tolerance), else 0;
* ``mass_gap_a`` = share of the positive mass of ``m_a`` in ``a``'s evidence − mean share in the other
  classes' evidence (relevance mass accuracy, Arras, Osman & Samek, Information Fusion 2022, as a difference
  between the classes), in ``[-1, 1]``;
* ``both_point`` = 1 for a sample whose maps all point at their own class's evidence.

Reported: mean pointing and mean mass gap over the explained samples, and the share of samples where every
map points at its own evidence. A method whose map does not depend on the class (rollout, raw attention)
gives every class of a sample the same map ``m``: the gaps of a two-class sample are ``s_a − s_b`` and
``s_b − s_a``, which cancel exactly (a sample's gaps are summed first), so its mean mass gap is exactly 0;
and ``m``'s maximum lies in at most one of the two disjoint evidence regions, so its mean pointing is at
most 0.5. A class-specific method can reach 1 on both.

Maps and evidence as :mod:`xaibench.metrics.localisation` reads them (images: the map upsampled to the
masks, no min-max, which would move the positive mass; text: per-word scores over the scored words), with
its tie policy: tied maxima count as the expected hit of a random tie break (``both_point`` is then the
product of the sample's pointing values), and a map without positive mass spreads it evenly. Sums are per
sample, so shards merge exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from xaibench.core.types import Attribution, Batch, MetricRunner, ModelAdapter
from xaibench.metrics.localisation import Evidence, mass_share, pointing_hits
from xaibench.metrics.sums import TensorSums

#: entries of the sum vector
_SUMS = ("n", "pointing", "mass_own", "mass_other", "mass_gap", "samples", "both_point", "single", "constant")
_COLUMNS = ("pointing", "mass_own", "mass_other", "mass_gap", "both_point")


def item_scores(values: torch.Tensor, valid: torch.Tensor, masks: torch.Tensor) -> tuple[float, list[float]]:
    """Pointing and mass shares of one map.

    Args:
        values: ``[N]`` the map over pixels or words.
        valid: ``[N]`` bool, the positions that take part (the scored words).
        masks: ``[K, N]`` bool, the explained class's evidence first, then each other class's.

    Returns:
        ``(pointing, shares)``: the pointing hit on ``masks[0]`` and the share of the positive mass in each of
        ``masks`` (each computed on its own, so the same map and mask always give the same bits).
    """
    pointing = float(pointing_hits(values[None], masks[0][None], valid[None])[0])
    weights = values.nan_to_num(0.0).clamp(min=0.0)[None]
    return pointing, [float(mass_share(weights, m[None], valid[None])[0]) for m in masks]


def _other_masks(batch: Batch, ev: Evidence) -> list[torch.Tensor]:
    """Per explained sample ``[K-1, N]`` bool: the other classes' evidence, laid out as ``ev.masks``."""
    extras = batch.extras
    if batch.images is not None:
        if "other_masks" not in extras:
            raise ValueError(
                "class_sensitivity needs a mask per class (a dataset providing 'class_evidence', e.g. "
                "synthetic_pairs) explained with target=each"
            )
        return [m.to("cpu").flatten(1) > 0 for m in extras["other_masks"]]
    if "other_rationales" not in extras:
        raise ValueError(
            "class_sensitivity needs the evidence spans of every class (a dataset providing 'class_evidence', "
            "e.g. synthetic_text_pairs) explained with target=each"
        )
    out = []
    for i, classes in enumerate(extras["other_rationales"]):
        flags = torch.zeros(len(classes), ev.masks.shape[1], dtype=torch.bool)
        for k, spans in enumerate(classes):
            for start, end in spans:
                flags[k, int(start) : int(end)] = True
        out.append(flags & ev.valid[i])
    return out


class ClassSensitivity(TensorSums, MetricRunner):
    """Pointing and mass gap of each class's map against its own and the other classes' evidence.

    One row per explained sample: ``pointing``, ``mass_own``, ``mass_other``, ``mass_gap``, ``both_point``
    (the sample's value, on each of its rows) and ``constant_map``; NaN for a sample with a single class
    (there is nothing to tell apart; counted in ``single``).
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
        ev = Evidence(batch, attribution, self.name, 0.0, -1)
        others = _other_masks(batch, ev)
        groups: dict[str, list[int]] = {}
        for i, sample in enumerate(batch.extras.get("samples") or batch.ids):
            groups.setdefault(sample, []).append(i)
        rows: list[dict[str, Any]] = [{} for _ in range(len(batch))]
        for members in groups.values():
            gap_sum, complete, all_point = 0.0, True, 1.0
            for i in members:
                constant = bool(ev.constant[i])
                if not len(others[i]):
                    rows[i] = {**dict.fromkeys(_COLUMNS, float("nan")), "constant_map": constant}
                    self._add("single", 1)
                    complete = False
                    continue
                complete = complete and len(members) == len(others[i]) + 1
                masks = torch.cat([ev.masks[i][None], others[i]])
                pointing, shares = item_scores(ev.maps[i], ev.valid[i], masks)
                share_other = sum(shares[1:]) / len(shares[1:])
                gap = shares[0] - share_other
                gap_sum += gap
                all_point *= pointing
                for key, value in zip(
                    ("n", "pointing", "mass_own", "mass_other", "constant"),
                    (1, pointing, shares[0], share_other, int(constant)),
                    strict=True,
                ):
                    self._add(key, value)
                rows[i] = {"pointing": pointing, "mass_own": shares[0], "mass_other": share_other, "mass_gap": gap}
                rows[i]["constant_map"] = constant
            self._add("mass_gap", gap_sum)  # a sample's gaps first: a class-agnostic map sums to exactly 0
            if complete:
                self._add("samples", 1)
                self._add("both_point", all_point)
            for i in members:
                rows[i].setdefault("both_point", all_point if complete else float("nan"))
        return rows

    def compute(self) -> dict[str, Any]:
        """``pointing``, ``mass_gap``, ``mass_own``, ``mass_other`` (means over explained samples),
        ``both_point`` (share of samples), ``n``, ``n_samples``, ``single``, ``constant_maps``."""
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
            "constant_maps": int(s["constant"]),
        }
