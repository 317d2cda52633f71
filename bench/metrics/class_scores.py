"""What a model's logits say about one class, for single-label (softmax) and multi-label (sigmoid) models.

A single-label classifier's classes compete: the probability is the softmax and a sample is a hit when
the top class is the label. A multi-label classifier (``ModelAdapter.multi_label``, trained with a sigmoid
loss, e.g. ``pairs_vit``) scores each class on its own: the probability of class ``c`` is
``sigmoid(logit_c)`` and the class is detected when ``logit_c > 0`` (probability > 0.5), whatever the
other classes do. The perturbation and faithfulness metrics read the explained class's probability
through these helpers, so both kinds of model are scored on what they actually predict.
"""

from __future__ import annotations

import torch


def class_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """``[B, C]`` probabilities: softmax over classes, or a sigmoid per class for a multi-label model."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


class ClassStats:
    """Per-sample quantities of one set of logits ``[N, C]`` against ``labels`` ``[N]`` (in the logits' dtype).

    Attributes:
        pred: ``[N]`` top class (``max``, not argmax, as the reference, so ties resolve the same way).
        hit: ``[N]`` bool. Single-label: the top class is the label; multi-label: the label is detected.
        top_logit: ``[N]`` the top logit (multi-label: the label's logit).
        top_prob: ``[N]`` the top class's probability (multi-label: the label's probability).
        dissimilarity: ``[N]`` single-label: ``log(p_label / p_second)``, ``p_second`` the second-largest
            probability overall, as a difference of log-probabilities (finite where the reference's ratio
            of softmax values underflows); multi-label: the label's log-odds ``log(p / (1 - p))``.
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False) -> None:
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # probability statistics of reduced-precision models in float32
        top_logit, pred = logits.max(dim=1)
        self.pred = pred
        if multi_label:
            own = logits.gather(1, labels[:, None])[:, 0]
            self.hit = own > 0
            self.top_logit = own
            self.top_prob = torch.sigmoid(own)
            self.dissimilarity = own
            return
        log_probs = torch.log_softmax(logits, dim=1)
        top2 = log_probs.topk(2, dim=1).values
        self.hit = pred == labels
        self.top_logit = top_logit
        self.top_prob = log_probs.max(dim=1).values.exp()
        self.dissimilarity = log_probs.gather(1, labels[:, None])[:, 0] - top2[:, 1]
