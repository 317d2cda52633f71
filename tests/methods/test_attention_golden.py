"""Raw attention, rollout and attention Grad-CAM on stock timm ViTs equal the reference's arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_golden_close, golden_cases, golden_dir, golden_stems, load_golden_vit, mode_target
from xaibench.core.types import Batch
from xaibench.methods.attention import AttnGradCAM, RawAttention, Rollout

# golden array name -> our method (REFERENCE §3.1 names -> paper names)
METHODS = {
    "attn_last_layer": lambda: RawAttention(),
    "rollout_sl0": lambda: Rollout(start_layer=0),
    "rollout_sl1": lambda: Rollout(start_layer=1),
    "attn_gradcam": lambda: AttnGradCAM(constant_map="nan"),
}

STEMS = golden_stems("vit_")


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.full((len(x),), -1))


@pytest.mark.golden
@pytest.mark.parametrize("stem", STEMS)
def test_attention_methods_match_golden(stem: str) -> None:
    assert STEMS, "no vit_* golden cases found"
    model = load_golden_vit(stem)
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
        cases = golden_cases(z)
    checked = 0
    for inp, mode in cases:
        x = torch.from_numpy(arrays[f"{inp}__input"])
        target = mode_target(mode)
        for name, make in METHODS.items():
            key = f"{inp}__{mode}__{name}"
            if key not in arrays:
                continue
            attribution = make()(model, _batch(x), target)
            assert_golden_close(attribution.maps, arrays[key], key)
            checked += 1
        logits = model.logits(x).detach()
        assert_golden_close(logits, arrays[f"{inp}__{mode}__logits_vit_new"], f"{inp}__{mode}__logits")
    assert checked >= len(cases) * 2


@pytest.mark.golden
@pytest.mark.parametrize("stem", STEMS)
def test_constant_gradcam_map_is_zeros_by_default(stem: str) -> None:
    """Where the reference returns NaN (a constant map), the default returns zeros, never NaN."""
    model = load_golden_vit(stem)
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        found = [
            (k, z[k], z[k.split("__")[0] + "__input"])
            for k in z.files
            if k.endswith("__attn_gradcam") and np.isnan(z[k]).all()
        ]
    if not found:
        pytest.skip("no constant-map case in this golden file")
    for key, _, x in found:
        target = mode_target(key.split("__")[1])
        maps = AttnGradCAM()(model, _batch(torch.from_numpy(x)), target).maps
        assert torch.equal(maps, torch.zeros_like(maps)), key
