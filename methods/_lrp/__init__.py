"""The LRP engine: rules as ``autograd.Function`` s, rule presets as data, per-family canonizers.

* :mod:`.rules` — one ``torch.autograd.Function`` per rule (equation in each docstring);
* :mod:`.presets` — ``"ours"`` (reference ``layers_ours.py``) and ``"lrp"`` (``layers_lrp.py``);
* :mod:`.vit` — the canonizer for timm ``VisionTransformer`` and :func:`~.vit.vit_relevance`.
"""

from xaibench.methods._lrp.presets import PRESETS, RulePreset, get_preset
from xaibench.methods._lrp.rules import RuleState, safe_divide
from xaibench.methods._lrp.vit import ViTCanonizer, ViTRelevance, vit_relevance

__all__ = [
    "PRESETS",
    "RulePreset",
    "RuleState",
    "ViTCanonizer",
    "ViTRelevance",
    "get_preset",
    "safe_divide",
    "vit_relevance",
]
