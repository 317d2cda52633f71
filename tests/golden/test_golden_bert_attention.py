"""Stock Hugging Face BERT + xaibench methods equal the reference's BERT arrays (``bert_*_golden.npz``).

Cases are discovered from the files: every ``bert_*`` stem, every ``in{i}`` and mode (``top``, ``cls{c}``),
every array name. Each golden name maps to the method and arguments of the reference's BERT generator
(REFERENCE §3.2). The relevance methods belong to the LRP engine (``methods/lrp.py``); while a method
there does not declare the ``text`` modality its arrays are skipped with the reason, and they are checked
as soon as it does.
"""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch

from helpers import assert_golden_close, golden_cases, golden_dir, golden_stems, mode_target
from xaibench.core.types import Batch

# golden name -> (module, class, kwargs): the reference's BERT Generator calls (REFERENCE §3.2)
METHODS: dict[str, tuple[str, str, dict]] = {
    "last_attn": ("xaibench.methods.attention", "RawAttention", {}),
    "rollout": ("xaibench.methods.attention", "Rollout", {"start_layer": 0}),
    "attn_gradcam": ("xaibench.methods.attention", "AttnGradCAM", {"weights": "all", "constant_map": "nan"}),
    "partial_lrp": ("xaibench.methods.lrp", "PartialLRP", {}),
    "lrp": ("xaibench.methods.lrp", "FullLRP", {}),
}
# transformer_attribution_sl{s}: Generator(test_classifier).generate_LRP(start_layer=s)
TRANSFORMER_ATTRIBUTION = re.compile(r"transformer_attribution_sl(\d+)")
LOGITS = ("logits_orig", "logits_ours")
INPUTS = ("input_ids", "attention_mask")

STEMS = golden_stems("bert_")


def load_golden_bert(stem: str, dtype: torch.dtype = torch.float64):
    from xaibench.models.hf_bert import HFBert

    d = golden_dir()
    return HFBert(
        config_path=str(d / f"{stem}_config.json"),
        state_dict_path=str(d / f"{stem}_state_dict.pt"),
        vocab_path=str(d / "eraser_synthetic" / "vocab.txt"),  # unused by these id inputs
        name=stem,
    ).to(dtype=dtype)


def method_for(name: str):
    """The configured method for a golden array name; skips (with the reason) what is not supported yet."""
    m = TRANSFORMER_ATTRIBUTION.fullmatch(name)
    if m:
        module, cls, kwargs = "xaibench.methods.lrp", "TransformerAttribution", {"start_layer": int(m.group(1))}
    elif name in METHODS:
        module, cls, kwargs = METHODS[name]
    else:
        pytest.fail(f"golden array {name!r} has no method mapping in this test")
    try:
        method_cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"{name}: {module}.{cls} is missing ({exc})")
    if "text" not in method_cls.modalities:
        pytest.skip(
            f"{name}: {module}.{cls} does not support BERT yet (modalities {sorted(method_cls.modalities)}); "
            "needs the LRP engine's BERT canonizer"
        )
    return method_cls(**kwargs)


def _names(stem: str) -> list[str]:
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        names = {k.split("__")[2] for k in z.files if k.count("__") == 2}
    return sorted(names - set(LOGITS))


PARAMS = [(stem, name) for stem in STEMS for name in _names(stem)]


def _cases(stem: str):
    with np.load(golden_dir() / f"{stem}_golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
        cases = golden_cases(z)
    return arrays, cases


def _batch(arrays: dict, inp: str) -> Batch:
    inputs = {k: torch.from_numpy(arrays[f"{inp}__{k}"]).long() for k in INPUTS}
    return Batch(ids=(inp,), inputs=inputs, labels=torch.full((1,), -1))


@pytest.mark.golden
def test_bert_golden_cases_exist(golden) -> None:
    assert STEMS, f"no bert_* golden files in {golden}"
    assert all(len(_cases(stem)[1]) >= 3 for stem in STEMS)  # top, cls0, cls1 per input


@pytest.mark.golden
@pytest.mark.parametrize(("stem", "name"), PARAMS, ids=[f"{s}-{n}" for s, n in PARAMS])
def test_bert_method_matches_golden(stem: str, name: str) -> None:
    method = method_for(name)
    model = load_golden_bert(stem)
    arrays, cases = _cases(stem)
    checked = 0
    for inp, mode in cases:
        key = f"{inp}__{mode}__{name}"
        if key not in arrays:
            continue
        attribution = method(model, _batch(arrays, inp), mode_target(mode))
        assert attribution.maps.shape == arrays[key].shape, key
        assert_golden_close(attribution.maps, arrays[key], key)
        checked += 1
    assert checked == len(cases)


@pytest.mark.golden
@pytest.mark.parametrize("stem", STEMS)
def test_bert_logits_match_golden(stem: str) -> None:
    model = load_golden_bert(stem)
    arrays, cases = _cases(stem)
    for inp, mode in cases:
        with torch.inference_mode():
            logits = model.logits(_batch(arrays, inp).inputs)
        for name in LOGITS:
            key = f"{inp}__{mode}__{name}"
            if key in arrays:
                assert_golden_close(logits, arrays[key], key)


@pytest.mark.golden
@pytest.mark.parametrize("stem", STEMS)
def test_bert_inputs_batched_with_padding_match_golden(stem: str) -> None:
    """All inputs of a file in one padded batch give each input's golden rollout and raw attention."""
    from xaibench.methods.attention import RawAttention, Rollout

    model = load_golden_bert(stem)
    arrays, cases = _cases(stem)
    inputs = sorted({inp for inp, _ in cases})
    ids = [torch.from_numpy(arrays[f"{i}__input_ids"]).long()[0] for i in inputs]
    ids.append(torch.cat([ids[0], ids[0][1:]]))  # a longer extra row: every golden row gets padded
    width = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    batch = Batch(ids=tuple(map(str, range(len(ids)))), inputs={"input_ids": input_ids, "attention_mask": mask},
                  labels=torch.full((len(ids),), -1))  # fmt: skip
    for name, method in (("rollout", Rollout(start_layer=0)), ("last_attn", RawAttention())):
        maps = method(model, batch, None).maps
        for row, inp in enumerate(inputs):
            key = f"{inp}__top__{name}"
            n = arrays[key].shape[-1]
            assert_golden_close(maps[row, :n], arrays[key][0], f"{key} (padded batch)")
            assert (maps[row, n:] == 0).all()
