"""Positive and negative perturbation test (Chefer et al., CVPR 2021, §4.2 and Table 1).

Protocol of the reference (``baselines/ViT/generate_visualizations.py`` then
``baselines/ViT/pertubation_eval_from_hdf5.py``, see REFERENCE.md §5), applied per sample:

1. The heatmap as the reference stores it: a token map ``[gh, gw]`` is upsampled bilinearly
   (``align_corners=False``) to the image size, a pixel map is taken as is; then min-max scaled to
   ``[0, 1]`` **per sample** (the reference scales over the batch, at batch size 1) and cast to float32
   (its HDF5 dtype), flattened to ``H·W`` values.
2. For each removed fraction ``p`` in ``steps``: ``k = int(H·W·p)``, ``idx = torch.topk(vis, k)`` (positive
   direction: most relevant first) or ``torch.topk(-vis, k)`` (negative direction: least relevant first);
   those pixels are set to 0 in all three channels of the **un-normalised** ``[0, 1]`` image, which is then
   normalised and re-classified.
3. A step is a hit when the perturbed argmax equals the **ground-truth label** (for heatmaps of the
   predicted and of the target class alike). For a multi-label model (``model.multi_label``) the label is
   the explained class (``target=each``) and a hit means that class is still detected (its sigmoid
   probability > 0.5); the probability and logit columns then follow the explained class
   (:mod:`xaibench.metrics.class_scores`).

The paper's "AUC" is the area under accuracy vs removed fraction, which the reference never computes;
the default definition (``"trapezoid_0_to_0.9"``) is the author's (issue #31): trapezoidal area of accuracy
over ``x = 0, 0.1, ..., 0.9`` with ``x = 0`` the unperturbed accuracy, in percent.
``"eleven_point"`` appends ``x = 1`` with accuracy 0. Both are reported; ``auc`` picks ``{dir}_auc``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from xaibench.core.heatmaps import pixel_heatmaps
from xaibench.core.types import Attribution, Batch, ImageModelAdapter, MetricRunner, ModelAdapter, merge_states
from xaibench.metrics.class_scores import ClassStats
from xaibench.metrics.forwards import classify_images

log = logging.getLogger(__name__)

DIRECTIONS = ("positive", "negative")
AUC_DEFINITIONS = ("trapezoid_0_to_0.9", "eleven_point")
DEFAULT_STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_HEATMAP_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def step_label(step: float) -> str:
    """Column suffix of a removed fraction: ``0.1 -> "0.1"``."""
    return f"{step:g}"


def perturbation_auc(
    accuracies: Sequence[float], base_accuracy: float, steps: Sequence[float], definition: str
) -> float:
    """Area under the accuracy-vs-removed-fraction curve, in percent.

    Args:
        accuracies: accuracy (fraction in ``[0, 1]``) after removing each fraction in ``steps``.
        base_accuracy: unperturbed accuracy, the curve's value at ``x = 0``.
        steps: removed fractions, increasing, in ``(0, 1]``.
        definition: ``"trapezoid_0_to_0.9"``: ``100 · trapz([acc_0, acc(steps)], [0, steps])`` (the
            paper's, per the author in issue #31); ``"eleven_point"``: the same plus the point
            ``x = 1, acc = 0`` (a public script's variant; adds ``0.1 · acc(0.9) / 2``).

    Returns:
        The area times 100 (accuracy in percent times removed fraction).
    """
    if definition not in AUC_DEFINITIONS:
        raise ValueError(f"unknown AUC definition {definition!r}; supported: {list(AUC_DEFINITIONS)}")
    if len(accuracies) != len(steps):
        raise ValueError(f"{len(accuracies)} accuracies for {len(steps)} steps")
    xs = [0.0, *map(float, steps)]
    ys = [float(base_accuracy), *map(float, accuracies)]
    if definition == "eleven_point" and xs[-1] < 1.0:
        xs.append(1.0)
        ys.append(0.0)
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2.0 for i in range(len(xs) - 1))
    return 100.0 * area


def reference_heatmap(
    attribution: Attribution, image_size: tuple[int, int], dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """The heatmap exactly as the reference writes it to ``results.hdf5`` (``vis``), per sample.

    Args:
        attribution: ``maps`` ``[B, gh, gw]`` (``level="tokens"``) or ``[B, H, W]`` (``level="pixels"``).
        image_size: ``(H, W)`` of the images the maps explain.
        dtype: dtype of the result (the reference stores float32); ``None`` keeps the maps' dtype.

    Returns:
        ``[B, H, W]`` on CPU: upsampled (token maps; bilinear, ``align_corners=False``, no antialias),
        then ``(m - min) / (max - min)`` per sample. A constant map gives NaN, as in the reference (0/0).
    """
    cpu = Attribution(attribution.maps.detach().to("cpu"), attribution.targets, attribution.logits, attribution.level)
    out = pixel_heatmaps(cpu, image_size, constant=float("nan"))
    return out if dtype is None else out.to(dtype)


class Perturbation(MetricRunner):
    """Positive/negative perturbation test: accuracy as the most/least relevant pixels are removed.

    Args:
        steps: removed fractions of the ``H·W`` pixels, increasing, in ``(0, 1]``; default 0.1 ... 0.9.
        directions: any of ``"positive"`` (remove the most relevant first; lower AUC is better) and
            ``"negative"`` (least relevant first; higher is better). Both by default, sharing one
            attribution pass. (The reference's ``--neg`` is an ``argparse type=bool`` flag that is True for
            any non-empty string; here the direction is named.)
        auc: which definition ``{dir}_auc`` reports: ``"trapezoid_0_to_0.9"`` (paper) or ``"eleven_point"``;
            both are always reported under their own names too.
        batch_size: images per re-classification forward.
        heatmap_dtype: dtype the min-max scaled heatmap is cast to before ``topk`` (``"float32"``: as the
            reference's HDF5 file, which decides ties; ``"float64"``; ``None``: the maps' own dtype).
        topk_device: where ``torch.topk`` ranks the pixels: ``"cpu"`` (default; the order of tied pixels
            is CPU ``topk``'s, as in the golden files) or ``"model"`` (the model's device: faster for large
            runs on a GPU, whose ``topk`` may order tied pixels differently, as the reference's CUDA runs).
        fused_attention: re-classify with the model's fused attention kernels (no attention probabilities
            are read; :mod:`xaibench.metrics.forwards`); ``False``: the eager path.
    """

    name: ClassVar[str] = "perturbation"
    requires: ClassVar[frozenset[str]] = frozenset({"label"})
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "positive_auc": False,
        "negative_auc": True,
        "base_accuracy": True,
    }
    needs_model: ClassVar[bool] = True

    def __init__(
        self,
        steps: Sequence[float] = DEFAULT_STEPS,
        directions: Sequence[str] = DIRECTIONS,
        auc: str = "trapezoid_0_to_0.9",
        batch_size: int = 64,
        heatmap_dtype: str | None = "float32",
        topk_device: str = "cpu",
        fused_attention: bool = True,
    ) -> None:
        steps = [float(s) for s in steps]
        if not steps:
            raise ValueError("perturbation `steps` is empty; give removed fractions such as [0.1, ..., 0.9]")
        if any(not 0.0 < s <= 1.0 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"perturbation `steps` must be strictly increasing fractions in (0, 1]; got {steps}")
        directions = [directions] if isinstance(directions, str) else list(directions)
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions or len(set(directions)) != len(directions):
            raise ValueError(
                f"perturbation `directions` must be a non-empty list of distinct values from {list(DIRECTIONS)}; "
                f"got {directions}"
            )
        if auc == "trapezoid":
            auc = "trapezoid_0_to_0.9"
        if auc not in AUC_DEFINITIONS:
            raise ValueError(f"unknown perturbation `auc` {auc!r}; supported: {list(AUC_DEFINITIONS)}")
        if int(batch_size) < 1:
            raise ValueError(f"perturbation `batch_size` must be >= 1; got {batch_size}")
        if heatmap_dtype is not None and heatmap_dtype not in _HEATMAP_DTYPES:
            raise ValueError(f"unknown `heatmap_dtype` {heatmap_dtype!r}; supported: {list(_HEATMAP_DTYPES)} or null")
        self.steps = tuple(steps)
        self.directions = tuple(directions)
        self.auc = auc
        self.batch_size = int(batch_size)
        if topk_device not in ("cpu", "model"):
            raise ValueError(f"unknown `topk_device` {topk_device!r}; supported: 'cpu', 'model'")
        self.heatmap_dtype = None if heatmap_dtype is None else _HEATMAP_DTYPES[heatmap_dtype]
        self.topk_device = topk_device
        self.fused_attention = bool(fused_attention)
        self.reset()

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        d, s = len(self.directions), len(self.steps)
        self.n = 0
        self.model_hits = 0
        self.model_dissimilarity_sum = 0.0
        self.hits = torch.zeros(d, s, dtype=torch.int64)
        self.logit_diff_sum = torch.zeros(d, s, dtype=torch.float64)
        self.prob_diff_sum = torch.zeros(d, s, dtype=torch.float64)
        self.dissimilarity_sum = torch.zeros(d, s, dtype=torch.float64)

    def state(self) -> dict[str, Any]:
        """Dataset-level sums as numbers and nested lists (``[direction][step]``), merged by addition."""
        return {
            "n": self.n,
            "model_hits": self.model_hits,
            "model_dissimilarity_sum": self.model_dissimilarity_sum,
            "hits": self.hits.tolist(),
            "logit_diff_sum": self.logit_diff_sum.tolist(),
            "prob_diff_sum": self.prob_diff_sum.tolist(),
            "dissimilarity_sum": self.dissimilarity_sum.tolist(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        shape = (len(self.directions), len(self.steps))
        tables = {}
        for key, dtype in (
            ("hits", torch.int64),
            ("logit_diff_sum", torch.float64),
            ("prob_diff_sum", torch.float64),
            ("dissimilarity_sum", torch.float64),
        ):
            table = torch.as_tensor(state[key], dtype=dtype).detach().to("cpu").clone()
            if tuple(table.shape) != shape:
                raise ValueError(
                    f"perturbation state {key!r} has shape {tuple(table.shape)}; this runner has {shape} "
                    f"(directions {list(self.directions)}, {len(self.steps)} steps)"
                )
            tables[key] = table
        self.n = int(state["n"])
        self.model_hits = int(state["model_hits"])
        self.model_dissimilarity_sum = float(state["model_dissimilarity_sum"])
        for key, table in tables.items():
            setattr(self, key, table)

    def merge(self, other: Perturbation | Mapping[str, Any]) -> None:
        """Add another shard's sums (a runner with the same steps and directions, or its :meth:`state`)."""
        if isinstance(other, Perturbation):
            if other.steps != self.steps or other.directions != self.directions:
                raise ValueError("cannot merge perturbation runners with different steps or directions")
            other = other.state()
        self.load_state(merge_states([self.state(), other]))

    # -- per batch ------------------------------------------------------------------------------
    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """Perturb and re-classify every sample of the batch in both directions.

        Args:
            batch: needs ``images`` ``[B, 3, H, W]`` in ``[0, 1]`` and ``labels`` ``[B]`` (ground truth).
            attribution: maps ``[B, gh, gw]`` (tokens) or ``[B, H, W]`` (pixels).
            model: an image adapter with ``normalize(images) -> inputs`` and ``logits(inputs)``.

        Returns:
            One row per sample, in batch order: ``model_hit``, ``model_pred``, ``model_dissimilarity`` and
            per direction ``{dir}_hit_{p}``, ``{dir}_logit_diff_{p}``, ``{dir}_prob_diff_{p}``,
            ``{dir}_dissimilarity_{p}`` for each step ``p``, and the sample's ``{dir}_auc`` (its hit curve
            under the chosen definition; the mean over samples is the dataset AUC).
        """
        images, labels = self._check_inputs(batch, attribution, model)
        n_images, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        vis = reference_heatmap(attribution, (height, width), self.heatmap_dtype).reshape(n_images, -1)
        n_nan = int(torch.isnan(vis).any(dim=1).sum())
        if n_nan:
            log.warning(
                "%d of %d heatmaps are NaN (constant maps: the reference's 0/0 min-max); their pixels are "
                "ranked by torch.topk as the reference does",
                n_nan,
                n_images,
            )

        base_size = height * width
        flat = images.reshape(n_images, images.shape[1], -1)

        ranked = vis.to(model.device) if self.topk_device == "model" else vis

        def perturbed() -> Iterable[torch.Tensor]:
            yield images
            for direction in self.directions:
                scores = ranked if direction == "positive" else -ranked
                for step in self.steps:
                    idx = torch.topk(scores, int(base_size * step), dim=-1).indices.to("cpu")
                    idx = idx[:, None, :].expand(-1, flat.shape[1], -1)
                    yield flat.clone().scatter_(-1, idx, 0).reshape(images.shape)

        logits = classify_images(model, map(model.normalize, perturbed()), self.batch_size, self.fused_attention)
        base = ClassStats(logits[0], labels, model.multi_label)
        d, s = len(self.directions), len(self.steps)
        pert = ClassStats(torch.cat(logits[1:]), labels.repeat(d * s), model.multi_label)
        hits = pert.hit.reshape(d, s, n_images)
        logit_diff = (pert.top_logit.reshape(d, s, n_images) - base.top_logit).double()
        prob_diff = (pert.top_prob.reshape(d, s, n_images) - base.top_prob).double()
        dissimilarity = pert.dissimilarity.reshape(d, s, n_images).double()

        self.n += n_images
        self.model_hits += int(base.hit.sum())
        self.model_dissimilarity_sum += float(base.dissimilarity.double().sum())
        self.hits += hits.sum(dim=2).to(torch.int64)
        self.logit_diff_sum += logit_diff.sum(dim=2)
        self.prob_diff_sum += prob_diff.sum(dim=2)
        self.dissimilarity_sum += dissimilarity.sum(dim=2)

        rows: list[dict[str, Any]] = []
        for b in range(n_images):
            row: dict[str, Any] = {
                "model_hit": int(base.hit[b]),
                "model_pred": int(base.pred[b]),
                "model_dissimilarity": float(base.dissimilarity[b]),
            }
            for i, direction in enumerate(self.directions):
                curve = [float(h) for h in hits[i, :, b]]
                for j, step in enumerate(self.steps):
                    p = step_label(step)
                    row[f"{direction}_hit_{p}"] = int(hits[i, j, b])
                    row[f"{direction}_logit_diff_{p}"] = float(logit_diff[i, j, b])
                    row[f"{direction}_prob_diff_{p}"] = float(prob_diff[i, j, b])
                    row[f"{direction}_dissimilarity_{p}"] = float(dissimilarity[i, j, b])
                row[f"{direction}_auc"] = perturbation_auc(curve, float(base.hit[b]), self.steps, self.auc)
            rows.append(row)
        return rows

    def _check_inputs(
        self, batch: Batch, attribution: Attribution, model: ModelAdapter
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.images is None:
            raise ValueError("the perturbation test needs `batch.images` ([B, 3, H, W] in [0, 1]); got None")
        if not isinstance(model, ImageModelAdapter):
            raise TypeError(f"the perturbation test needs an image model adapter; got {type(model).__name__}")
        images = batch.images.detach().to("cpu")
        if images.dim() != 4:
            raise ValueError(f"`batch.images` must be [B, C, H, W]; got shape {tuple(images.shape)}")
        labels = batch.labels.detach().to("cpu", torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"`batch.labels` must be [B] = [{images.shape[0]}]; got {tuple(labels.shape)}")
        if bool((labels < 0).any()):
            unknown = [i for i, lab in zip(batch.ids, labels.tolist(), strict=True) if lab < 0]
            raise ValueError(
                f"the perturbation test scores against ground-truth labels; samples {unknown[:5]} have none (-1)"
            )
        if attribution.maps.shape[0] != images.shape[0]:
            raise ValueError(
                f"attribution has {attribution.maps.shape[0]} maps for a batch of {images.shape[0]} images"
            )
        return images, labels

    # -- dataset level --------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        """Dataset-level results.

        Returns:
            ``n``, ``base_accuracy`` (unperturbed top-1 vs ground truth), ``auc_definition``, and per
            direction: ``{dir}_auc`` (chosen definition, percent), ``{dir}_auc_trapezoid_0_to_0.9``,
            ``{dir}_auc_eleven_point``, and per step ``{dir}_acc_{p}``, mean ``{dir}_logit_diff_{p}``,
            ``{dir}_prob_diff_{p}``, ``{dir}_dissimilarity_{p}``; ``model_dissimilarity`` (mean).
            With no samples the means are NaN.
        """
        n = self.n
        mean = (lambda x: float(x) / n) if n else (lambda x: math.nan)
        base = mean(self.model_hits)
        out: dict[str, Any] = {"n": n, "base_accuracy": base, "auc_definition": self.auc}
        for i, direction in enumerate(self.directions):
            accs = [mean(self.hits[i, j]) for j in range(len(self.steps))]
            for definition in AUC_DEFINITIONS:
                out[f"{direction}_auc_{definition}"] = perturbation_auc(accs, base, self.steps, definition)
            out[f"{direction}_auc"] = out[f"{direction}_auc_{self.auc}"]
            for j, step in enumerate(self.steps):
                p = step_label(step)
                out[f"{direction}_acc_{p}"] = accs[j]
                out[f"{direction}_logit_diff_{p}"] = mean(self.logit_diff_sum[i, j])
                out[f"{direction}_prob_diff_{p}"] = mean(self.prob_diff_sum[i, j])
                out[f"{direction}_dissimilarity_{p}"] = mean(self.dissimilarity_sum[i, j])
        out["model_dissimilarity"] = mean(self.model_dissimilarity_sum)
        return out
