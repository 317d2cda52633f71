"""AttnLRP and CP-LRP (``attnlrp``, ``cp_lrp``) equal lxt 2.1, the AttnLRP authors' package, in float64.

lxt patches classes globally, so its side runs in a subprocess (``lxt_oracle.py``, which says which of
lxt's patches each comparison uses): on every golden BERT (lxt's BERT patch functions on stock
``BertForSequenceClassification``) and on a torchvision ``VisionTransformer`` carrying every golden timm
ViT's weights mapped key by key (its logits are checked against timm's first). Cases (inputs, class
modes) are discovered from the golden files. Compared: the input relevance summed over the embedding
(BERT) or colour (ViT) dimension, per word-piece or pixel, and the logits, within the golden tolerance.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_golden_close, golden_cases, golden_dir, golden_stems, load_golden_vit, mode_target
from xaibench.core.types import Batch
from xaibench.methods.attnlrp import CPLRP, AttnLRP

pytestmark = pytest.mark.golden

ORACLE = Path(__file__).with_name("lxt_oracle.py")
VARIANTS = {"attnlrp": AttnLRP, "cp_lrp": CPLRP}


def _cases(stem: str) -> list[tuple[str, str]]:
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        return golden_cases(z)


PARAMS = [
    (stem, inp, mode, variant)
    for stem in golden_stems("bert_") + golden_stems("vit_")
    for inp, mode in _cases(stem)
    for variant in VARIANTS
]


@pytest.fixture(scope="module")
def lxt(tmp_path_factory) -> dict[str, np.ndarray]:
    if importlib.util.find_spec("lxt") is None:
        pytest.skip("lxt is not installed (make install adds it: pip install --no-deps lxt==2.1)")
    out = tmp_path_factory.mktemp("lxt") / "lxt.npz"
    done = subprocess.run(
        [sys.executable, str(ORACLE), str(golden_dir()), str(out)], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as z:
        return dict(z)


_MODELS: dict[str, object] = {}


def _model(stem: str):
    if stem not in _MODELS:
        if stem.startswith("vit_"):
            _MODELS[stem] = load_golden_vit(stem)
        else:
            from xaibench.models.hf_bert import HFBert

            d = golden_dir()
            _MODELS[stem] = HFBert(
                config_path=str(d / f"{stem}_config.json"),
                state_dict_path=str(d / f"{stem}_state_dict.pt"),
                vocab_path=str(d / "eraser_synthetic" / "vocab.txt"),  # unused: the inputs are ids
                name=stem,
            ).to(dtype=torch.float64)
    return _MODELS[stem]


def _batch(stem: str, inp: str) -> Batch:
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        if stem.startswith("vit_"):
            inputs = torch.from_numpy(z[f"{inp}__input"])
        else:
            inputs = {k: torch.from_numpy(z[f"{inp}__{k}"]) for k in ("input_ids", "attention_mask")}
    return Batch(ids=(inp,), inputs=inputs, labels=torch.tensor([-1]))


def test_cases_are_found() -> None:
    assert any(s.startswith("bert_") for s, *_ in PARAMS) and any(s.startswith("vit_") for s, *_ in PARAMS)


@pytest.mark.parametrize("stem", golden_stems("vit_"))
def test_torchvision_copy_has_the_timm_logits(lxt, stem: str) -> None:
    model = _model(stem)
    inputs = sorted({inp for inp, _ in _cases(stem)})
    for inp in inputs:
        with torch.no_grad():
            ours = model.logits(_batch(stem, inp).inputs)[0]
        assert_golden_close(lxt[f"{stem}__{inp}__torchvision_logits"], ours, f"{stem} {inp} torchvision logits")


@pytest.mark.parametrize(("stem", "inp", "mode", "variant"), PARAMS)
def test_relevance_equals_lxt(lxt, stem: str, inp: str, mode: str, variant: str) -> None:
    model, batch = _model(stem), _batch(stem, inp)
    method = VARIANTS[variant]()
    res = method.input_relevance(model, batch, mode_target(mode))
    key = f"{stem}__{inp}__{mode}__{variant}"
    relevance = res.input_relevance.sum(dim=1 if stem.startswith("vit_") else -1)[0]
    assert_golden_close(relevance, lxt[f"{key}__relevance"], f"{key} relevance")
    assert_golden_close(res.logits[0], lxt[f"{key}__logits"], f"{key} logits")
    # the method's map is that relevance (BERT: [CLS] entry 0, the reference's convention)
    maps = method(model, batch, mode_target(mode)).maps[0]
    expected = relevance.clone()
    if stem.startswith("bert_"):
        expected[0] = 0
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)
