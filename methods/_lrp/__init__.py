"""The LRP engine: rules as ``autograd.Function`` s, rule presets as data, per-family canonizers.

* :mod:`.rules` — the shared rule switch and the rules of activations (identity, sums, products,
  forks, token selection); :mod:`.linear_rules` — layers with weights (α1β0, z^B);
  :mod:`.attnlrp_rules` — AttnLRP / CP-LRP in the Gradient × Input form;
* :mod:`.presets` — ``"ours"`` (reference ``layers_ours.py``), ``"lrp"`` (``layers_lrp.py``),
  ``"attnlrp"`` and ``"cp_lrp"``;
* :mod:`.base` — what every canonizer shares (override/restore, the rule switch) and the relevance pass;
* :mod:`.vit` — the canonizer for timm ``VisionTransformer`` and :func:`~.vit.vit_relevance`;
* :mod:`.bert` (with :mod:`.bert_support`, the supported configurations) — the canonizer for Hugging
  Face ``BertForSequenceClassification`` and :func:`~.bert.bert_relevance`;
* :mod:`.network` — the network behind a model adapter, as the relevance methods see it.
"""

from xaibench.methods._lrp.base import Canonizer, Relevance, relevance_pass
from xaibench.methods._lrp.bert import BertCanonizer, bert_relevance
from xaibench.methods._lrp.presets import PRESETS, RulePreset, attnlrp_preset, get_preset
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
    "attnlrp_preset",
    "bert_relevance",
    "get_preset",
    "relevance_pass",
    "safe_divide",
    "vit_relevance",
]
