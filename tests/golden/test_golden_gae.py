"""GAE (Generic Attention-model Explainability, ICCV 2021) equals its authors' code on the golden ViTs.

Cases are discovered from the files: every ``gae_<model stem>.npz`` (``gae_vit_tiny.npz`` here; the
maintainers keep more of the same form, e.g. ViT-B/16), every input ``in{i}`` and class mode (``top``,
``cls{c}``) found in it. Each case is checked alone and all cases of a file together in one batch with
mixed targets; the map (``gae`` = ``R[0, 1:]``), the whole relevance matrix (``gae_full`` = ``R``) and the
logits, in float64 within the golden tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_golden_close, golden_cases, golden_dir, load_golden_vit, mode_target
from xaibench.core.types import Batch
from xaibench.methods.gae import GenericAttention

pytestmark = pytest.mark.golden

FILES = sorted(p.name for p in golden_dir().glob("gae_*.npz"))


def _model_stem(file: str) -> str:
    return file.removeprefix("gae_").removesuffix(".npz")


@pytest.fixture(scope="module", params=FILES)
def case_file(request):
    stem = _model_stem(request.param)
    if not (golden_dir() / f"{stem}_config.json").is_file():
        pytest.fail(f"{request.param}: no model files {stem}_config.json / {stem}_state_dict.pt beside it")
    with np.load(golden_dir() / request.param) as z:
        golden, cases = dict(z), golden_cases(z)
    assert cases, f"{request.param} has no in{{i}}__{{mode}}__* keys"
    return request.param, load_golden_vit(stem), golden, cases


def _inputs(golden: dict, cases: list[tuple[str, str]]) -> torch.Tensor:
    return torch.cat([torch.from_numpy(golden[f"{inp}__input"]) for inp, _ in cases])


def _check(file: str, golden: dict, cases: list[tuple[str, str]], maps, full, logits) -> None:
    for i, (inp, mode) in enumerate(cases):
        key = f"{inp}__{mode}"
        assert_golden_close(maps[i].reshape(1, -1), golden[f"{key}__gae"], f"{file} {key} gae")
        assert_golden_close(full[i], golden[f"{key}__gae_full"], f"{file} {key} gae_full")
        assert_golden_close(logits[i : i + 1], golden[f"{key}__logits"], f"{file} {key} logits")


def test_files_are_found() -> None:
    assert FILES, f"no gae_*.npz in {golden_dir()}"


def test_each_case_alone(case_file) -> None:
    file, model, golden, cases = case_file
    method = GenericAttention()
    for inp, mode in cases:
        batch = Batch(ids=(inp,), inputs=_inputs(golden, [(inp, mode)]), labels=torch.tensor([-1]))
        out = method(model, batch, mode_target(mode))
        full, targets, _ = method.relevance_matrix(model, batch, mode_target(mode))
        assert torch.equal(targets, out.targets) and out.maps.shape == (1, *model.grid_size)
        _check(file, golden, [(inp, mode)], out.maps, full, out.logits)


def test_all_cases_in_one_mixed_target_batch(case_file) -> None:
    file, model, golden, cases = case_file
    # the explained class of every case: the golden logits' argmax for "top", the named class otherwise
    target = torch.tensor(
        [int(np.argmax(golden[f"{inp}__{mode}__logits"])) if mode == "top" else int(mode[3:]) for inp, mode in cases]
    )
    assert len(set(target.tolist())) > 1 or len(cases) == 1  # the batch mixes targets
    batch = Batch(ids=tuple(f"{i}_{m}" for i, m in cases), inputs=_inputs(golden, cases), labels=target)
    method = GenericAttention()
    out = method(model, batch, target)
    full, _, _ = method.relevance_matrix(model, batch, target)
    assert torch.equal(out.targets, target)
    _check(file, golden, cases, out.maps, full, out.logits)
