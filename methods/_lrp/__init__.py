"""The LRP engine: rules as ``autograd.Function`` s, rule presets as data, per-family canonizers.

* :mod:`.rules` — one ``torch.autograd.Function`` per rule (equation in each docstring);
* :mod:`.presets` — ``"ours"`` (reference ``layers_ours.py``) and ``"lrp"`` (``layers_lrp.py``);
* :mod:`.base` — what every canonizer shares (override/restore, the rule switch) and the relevance pass;
* :mod:`.vit` — the canonizer for timm ``VisionTransformer`` and :func:`~.vit.vit_relevance`;
* :mod:`.bert` — the canonizer for Hugging Face ``BertForSequenceClassification`` and
  :func:`~.bert.bert_relevance`.
"""

from xaibench.methods._lrp.base import Canonizer, Relevance, relevance_pass
from xaibench.methods._lrp.bert import BertCanonizer, bert_relevance
from xaibench.methods._lrp.presets import PRESETS, RulePreset, get_preset
from xaibench.methods._lrp.rules import RuleState, safe_divide
from xaibench.methods._lrp.vit import ViTCanonizer, ViTRelevance, vit_relevance

__all__ = [
    "PRESETS",
    "BertCanonizer",
    "Canonizer",
    "Relevance",
    "RulePreset",
    "RuleState",
    "ViTCanonizer",
    "ViTRelevance",
    "bert_relevance",
    "get_preset",
    "relevance_pass",
    "safe_divide",
    "vit_relevance",
]
