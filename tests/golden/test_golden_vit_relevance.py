"""Relevance methods on the stock timm ViT equal the reference's float64 arrays (REFERENCE §3.1).

Cases are discovered from the files: every ``vit_*`` stem in the golden directory, every
``in{i}__{mode}__{name}`` key. A name that no test here or elsewhere knows fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pytest
import torch

from helpers import assert_golden_close, golden_dir, golden_stems, load_golden_vit, mode_target
from xaibench.core.types import AttributionMethod, Batch
from xaibench.methods.lrp import FullLRP, LRPRollout, PartialLRP, TransformerAttribution

# golden array name -> our method (reference call -> paper name, golden/README.md)
FIXED: dict[str, Callable[[], AttributionMethod]] = {
    "full_lrp": lambda: FullLRP(preset="lrp"),  # ViT_orig_LRP "full": the LRP baseline
    "full_lrp_ours_rules": lambda: FullLRP(preset="ours"),  # ViT_LRP "full"
    "lrp_last_layer": lambda: PartialLRP(layer=-1),  # partial LRP
    "lrp_last_layer_ablation": lambda: PartialLRP(layer=-1, use_gradient=True),  # is_ablation=True
    "lrp_second_layer": lambda: PartialLRP(layer=1),  # method="second_layer"
}
PATTERNS: list[tuple[re.Pattern[str], Callable[[int], AttributionMethod]]] = [
    (re.compile(r"transformer_attribution_sl(\d+)"), lambda s: TransformerAttribution(start_layer=s)),
    (re.compile(r"lrp_relevance_rollout_sl(\d+)"), lambda s: LRPRollout(start_layer=s)),
]
INTER = re.compile(r"inter_b(\d+)_(attn|attn_grad|attn_cam)")
# checked elsewhere: attention-only methods (tests/methods/test_attention_golden.py) and the logits of
# the reference's two LRP models (final-norm eps 1e-5, REFERENCE §1); logits_vit_new is checked here too
ELSEWHERE = re.compile(r"attn_last_layer|attn_gradcam|rollout_sl\d+|logits_vit_(new|lrp|orig_lrp)")

STEMS = golden_stems("vit_")


def method_for(name: str) -> AttributionMethod | None:
    if name in FIXED:
        return FIXED[name]()
    for pattern, make in PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return make(int(m.group(1)))
    return None


@lru_cache(maxsize=2)
def _arrays(stem: str) -> dict[str, np.ndarray]:
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=1)
def _model(stem: str):
    return load_golden_vit(stem, dtype=torch.float64)


def _keys(stem: str) -> list[tuple[str, str, str]]:
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        parts = [k.split("__") for k in z.files]
    return sorted(tuple(p) for p in parts if len(p) == 3)


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.full((len(x),), -1))


METHOD_CASES = [(s, i, m, n) for s in STEMS for i, m, n in _keys(s) if method_for(n) is not None]
INTER_CASES = sorted({(s, i, m) for s in STEMS for i, m, n in _keys(s) if INTER.fullmatch(n)})


@pytest.mark.golden
def test_vit_golden_cases_found(golden) -> None:
    assert STEMS, f"no vit_*_golden.npz in {golden}"
    assert METHOD_CASES, "the vit golden files hold no relevance-method arrays"


@pytest.mark.golden
@pytest.mark.parametrize("stem", STEMS)
def test_every_golden_name_is_known(stem: str) -> None:
    """A new array name must get a method here (or in the attention tests), never be skipped."""
    unknown = sorted(
        {
            n
            for _, _, n in _keys(stem)
            if method_for(n) is None and not INTER.fullmatch(n) and not ELSEWHERE.fullmatch(n)
        }
    )
    assert not unknown, f"{stem}: golden arrays with no known method: {unknown}"


@pytest.mark.golden
@pytest.mark.parametrize(("stem", "inp", "mode", "name"), METHOD_CASES, ids=["-".join(c) for c in METHOD_CASES])
def test_relevance_method_matches_golden(stem: str, inp: str, mode: str, name: str) -> None:
    arrays, model = _arrays(stem), _model(stem)
    key = f"{inp}__{mode}__{name}"
    x = torch.from_numpy(arrays[f"{inp}__input"])
    target = mode_target(mode)
    out = method_for(name)(model, _batch(x), target)
    assert out.maps.dtype == torch.float64
    assert_golden_close(out.maps, arrays[key], key)
    ref_logits = arrays.get(f"{inp}__{mode}__logits_vit_new")
    if ref_logits is not None:
        assert_golden_close(out.logits, ref_logits, f"{inp}__{mode}__logits_vit_new")
    expected = ref_logits.argmax(-1) if target is None else target.numpy()
    assert out.targets.tolist() == list(np.atleast_1d(expected)), f"{key}: explained the wrong class"


@pytest.mark.golden
@pytest.mark.parametrize(("stem", "inp", "mode"), INTER_CASES, ids=["-".join(c) for c in INTER_CASES])
def test_block_terms_match_golden(stem: str, inp: str, mode: str) -> None:
    """A_b, ∂y_c/∂A_b and R^(A)_b of the transformer_attribution_sl0 call, block by block."""
    arrays, model = _arrays(stem), _model(stem)
    terms = TransformerAttribution(start_layer=0).block_terms(
        model, _batch(torch.from_numpy(arrays[f"{inp}__input"])), mode_target(mode)
    )
    found = {"attn": terms.attention, "attn_grad": terms.gradient, "attn_cam": terms.relevance}
    checked = 0
    for key in arrays:
        head, _, name = key.rpartition("__")
        m = INTER.fullmatch(name)
        if head != f"{inp}__{mode}" or not m:
            continue
        assert_golden_close(found[m.group(2)][int(m.group(1))], arrays[key], key)
        checked += 1
    assert checked
