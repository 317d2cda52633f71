"""Cross-checks with Quantus (the reference implementation users trust): per-sample values equal within
1e-6 where the definitions agree, and every difference that is there on purpose pinned (README: "Quantus
differences"). Same model (a tiny timm ViT; float32, as Quantus feeds it), same inputs, same maps on both sides."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from helpers import tiny_vit
from xaibench.core.types import Attribution, Batch, Sample
from xaibench.metrics.imputation import noisy_linear_impute
from xaibench.metrics.insertion_deletion import InsertionDeletion
from xaibench.metrics.localisation import PointingGame, RelevanceMass, RelevanceRank
from xaibench.metrics.road import Road
from xaibench.metrics.sanity import Sanity
from xaibench.metrics.similarity import spearman, ssim

quantus = pytest.importorskip("quantus")
from quantus.helpers.model.pytorch_model import PyTorchModel  # noqa: E402

SIDE, PATCH, N = 32, 8, 4
TOL = 1e-6


@pytest.fixture(scope="module")
def setup():
    """A float32 tiny ViT (Quantus feeds float32 tensors), a batch of 4 images with box masks, and tie-free pixel maps."""
    warnings.filterwarnings("ignore")
    model = tiny_vit(img_size=SIDE, patch_size=PATCH, num_classes=4)
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(N, SIDE, SIDE, dtype=torch.long)
    for i in range(N):
        r, c = 4 + 4 * i, 6 + 2 * i
        masks[i, r : r + 10, c : c + 12] = 1
    samples = [
        Sample(id=f"q{i}", label=i % 4, image=torch.rand(3, SIDE, SIDE, generator=g), mask=masks[i]) for i in range(N)
    ]
    batch = model.batch_to(model.collate(samples))
    with torch.no_grad():
        logits = model.logits(batch.inputs)
    maps = torch.rand(N, SIDE, SIDE, generator=g, dtype=torch.float64)
    att = Attribution(maps=maps, targets=logits.argmax(1), logits=logits, level="pixels")
    return model, batch, att


def q_inputs(batch: Batch, att: Attribution):
    x = batch.inputs.detach().numpy()
    masks = None if batch.masks is None else batch.masks.numpy()[:, None]
    return x, batch.labels.numpy(), att.maps.detach().numpy()[:, None], masks


def test_pointing_mass_rank_equal_quantus_on_tie_free_maps(setup) -> None:
    model, batch, att = setup
    x, y, a, s = q_inputs(batch, att)
    kw = {"model": model.model, "x_batch": x, "y_batch": y, "a_batch": a, "s_batch": s}
    qp = np.asarray(quantus.PointingGame(disable_warnings=True)(**kw), dtype=float)
    qm = np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True)(**kw), dtype=float)
    qr = np.asarray(quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw), dtype=float)
    ours_p = [r["hit"] for r in PointingGame(tolerance=0).update(batch, att, model)]
    ours_m = [r["mass"] for r in RelevanceMass().update(batch, att, model)]
    ours_r = [r["rank"] for r in RelevanceRank().update(batch, att, model)]
    assert np.abs(qp - ours_p).max() <= TOL
    assert np.abs(qm - ours_m).max() <= TOL
    assert np.abs(qr - ours_r).max() <= TOL
    assert 0 < np.std(ours_r)  # a real comparison, not a constant


def test_pinned_localisation_differences(setup) -> None:
    model, batch, att = setup
    x, y, _, s = q_inputs(batch, att)
    mask = batch.masks.numpy().reshape(N, -1).astype(bool)
    # 1. a constant map: Quantus counts a hit when any tied maximum is in the mask (so 1); ours is the
    #    expected hit of a random tie break (the mask's share of the image), and rank ties likewise
    const = np.broadcast_to(np.arange(1.0, N + 1)[:, None, None, None], (N, 1, SIDE, SIDE)).copy()  # each constant
    kw = {"model": model.model, "x_batch": x, "y_batch": y, "a_batch": const, "s_batch": s}
    assert np.all(np.asarray(quantus.PointingGame(disable_warnings=True)(**kw)) == 1)
    flat_att = Attribution(maps=torch.from_numpy(const[:, 0]), targets=att.targets, logits=att.logits, level="pixels")
    share = mask.mean(axis=1)
    assert [r["hit"] for r in PointingGame(tolerance=0).update(batch, flat_att, model)] == pytest.approx(share)
    qr = np.asarray(quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw), dtype=float)
    order = np.argsort(-const.reshape(N, -1), axis=-1)  # Quantus breaks ties in np.argsort's order
    k = mask.sum(axis=1)
    assert qr == pytest.approx([mask[i, order[i, : k[i]]].mean() for i in range(N)])
    assert [r["rank"] for r in RelevanceRank().update(batch, flat_att, model)] == pytest.approx(share)
    # 2. signed relevance: Quantus' mass sums the signed map; ours only the positive relevance (CLEVR-XAI)
    signed = att.maps.numpy() - 0.5
    kw["a_batch"] = signed[:, None]
    qm = np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False)(**kw), dtype=float)
    flat = signed.reshape(N, -1)
    assert qm == pytest.approx((flat * mask).sum(1) / flat.sum(1), rel=1e-9)
    pos = np.clip(flat, 0, None)
    signed_att = Attribution(maps=torch.from_numpy(signed), targets=att.targets, logits=att.logits, level="pixels")
    ours = [r["mass"] for r in RelevanceMass().update(batch, signed_att, model)]
    assert ours == pytest.approx((pos * mask).sum(1) / pos.sum(1), rel=1e-9)
    assert np.abs(np.asarray(ours) - qm).max() > 1e-3


def test_imputation_equals_quantus() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((3, 24, 20))
    idx = np.sort(rng.permutation(24 * 20)[:300])
    removed = np.zeros(24 * 20, dtype=bool)
    removed[idx] = True
    theirs = quantus.functions.perturb_func.noisy_linear_imputation(img, idx, noise=0.0)
    ours = noisy_linear_impute(torch.from_numpy(img), torch.from_numpy(removed.reshape(24, 20)), noise=0.0)
    assert np.abs(theirs - ours.numpy()).max() <= 1e-12
    # the noise goes to the imputed pixels only (as the authors' and Quantus')
    noisy = noisy_linear_impute(torch.from_numpy(img), torch.from_numpy(removed.reshape(24, 20)), noise=0.5)
    kept = ~removed.reshape(24, 20)
    assert torch.equal(noisy[:, kept], torch.from_numpy(img)[:, kept])


def test_road_morf_equals_quantus(setup) -> None:
    """Quantus' ROAD ranks the attribution broadcast to ``C × H × W`` but imputes ``H·W`` pixel indices, so it
    only runs on single-channel inputs (3 channels: an IndexError); compared on a 1-channel ViT."""
    _, rgb, att = setup
    model = tiny_vit(img_size=SIDE, patch_size=PATCH, num_classes=4, in_chans=1)
    inputs = rgb.inputs.mean(dim=1, keepdim=True)
    with torch.no_grad():
        labels = model.logits(inputs).argmax(1)  # hits at x = 0, so the curves have something to lose
    batch = Batch(ids=rgb.ids, inputs=inputs, labels=labels)
    percentages = [10, 30, 50, 70, 90]
    q = quantus.ROAD(percentages=percentages, noise=0.0, disable_warnings=True)
    x, y, a = inputs.numpy(), labels.numpy(), att.maps.numpy()[:, None]
    accuracy = q(model=model.model, x_batch=x, y_batch=y, a_batch=a, channel_first=True)  # {percentage: mean}
    wrapped = PyTorchModel(model.model, channel_first=True, softmax=False, device="cpu")
    theirs = np.asarray(q.evaluate_batch(model=wrapped, x_batch=x, y_batch=y, a_batch=a)[0])  # per sample
    runner = Road(fractions=[p / 100 for p in percentages], orders=["morf"], noise=0.0)
    rows = runner.update(batch, att, model)
    ours = np.array([[r[f"morf_hit_{p / 100:g}"] for p in percentages] for r in rows])
    assert theirs.shape == ours.shape and np.array_equal(theirs, ours)
    out = runner.compute()
    assert [out[f"morf_acc_{p / 100:g}"] for p in percentages] == pytest.approx([accuracy[p] for p in percentages])
    assert 0 < ours.mean() < 1  # some steps keep the class, some lose it


def test_deletion_curve_equals_quantus_region_perturbation(setup) -> None:
    """Quantus' RegionPerturbation (MoRF patches set to a baseline) is the deletion curve when our steps
    remove one patch each: maps constant per patch, ``step = PATCH²`` pixels, baseline 0 (our ``zero``)."""
    model, batch, att = setup
    g = torch.Generator().manual_seed(5)
    patch_maps = torch.rand(N, SIDE // PATCH, SIDE // PATCH, generator=g, dtype=torch.float64)
    pixel_maps = patch_maps.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
    steps = (SIDE // PATCH) ** 2
    x, _, _, _ = q_inputs(batch, att)
    targets = att.targets.numpy()
    q = quantus.RegionPerturbation(
        patch_size=PATCH, regions_evaluation=steps, perturb_baseline=0.0, normalise=False, disable_warnings=True
    )
    theirs = np.asarray(q(model=model.model, x_batch=x, y_batch=targets, a_batch=pixel_maps.numpy()[:, None]))
    runner = InsertionDeletion(step_pixels=PATCH * PATCH * 224 * 224 // (SIDE * SIDE), deletion_baseline="zero")
    assert runner.step_size(SIDE, SIDE) == PATCH * PATCH
    att_p = Attribution(maps=pixel_maps, targets=att.targets, logits=att.logits, level="pixels")
    deletion, _, fractions = runner.curves(batch.inputs, pixel_maps, att.targets, model)
    assert len(fractions) == steps + 1
    assert np.abs(theirs - (deletion[:, :1] - deletion[:, 1:])).max() <= TOL  # Quantus: p_0 - p_i
    rows = runner.update(batch, att_p, model)
    auc = ((deletion[:, 1:] + deletion[:, :-1]) / 2).mean(axis=1)
    assert [r["deletion_auc"] for r in rows] == pytest.approx(auc, abs=1e-12)


def _explain(method, adapter):
    """A Quantus ``explain_func`` running our method on the model Quantus hands over (its randomised copy)."""

    def explain(model, inputs, targets, **kwargs):
        work = copy.copy(adapter)
        work.model = model
        batch = Batch(ids=tuple(f"e{i}" for i in range(len(inputs))), inputs=torch.as_tensor(inputs), labels=None)
        return method(work, batch, torch.as_tensor(targets).long()).maps.detach().numpy()

    return explain


def test_mprt_and_random_logit_equal_quantus(setup) -> None:
    from xaibench.methods.gradients import InputXGradient

    _, rgb, _ = setup
    model = tiny_vit(img_size=SIDE, patch_size=PATCH, num_classes=4, depth=1, seed=4)  # 9 layers: keeps it quick
    batch = model.batch_to(model.collate([Sample(id=f"m{i}", label=0, image=rgb.images[i]) for i in range(N)]))
    method = InputXGradient()
    att = method(model, batch, None)
    x, y, a, _ = q_inputs(batch, att)
    targets = att.targets.numpy()
    q = quantus.MPRT(layer_order="top_down", seed=42, abs=False, normalise=False, disable_warnings=True)
    theirs = q(model=model.model, x_batch=x, y_batch=targets, a_batch=a, explain_func=_explain(method, model))
    runner = Sanity(layers="modules", seed=42, layer_seeds="same", random_logit=False)
    rows = runner.update(batch, att, model, method=method)
    layers = [k for k in theirs if k != "original"]
    assert layers == runner.compute()["layers"]
    ours = np.array([[r[f"spearman@{name}"] for r in rows] for name in layers])
    assert np.abs(np.asarray([theirs[k] for k in layers]) - ours).max() <= TOL
    assert np.ptp(ours) > 0.1  # the similarity does move as layers are randomised

    # random logit, 2 classes (the other class is forced on both sides): Spearman agrees exactly
    two = tiny_vit(img_size=SIDE, patch_size=PATCH, num_classes=2, depth=1, seed=3)
    batch2 = two.batch_to(two.collate([Sample(id=f"r{i}", label=0, image=batch.images[i]) for i in range(N)]))
    att2 = method(two, batch2, None)
    x2, _, a2, _ = q_inputs(batch2, att2)
    kw = {"model": two.model, "x_batch": x2, "y_batch": att2.targets.numpy(), "a_batch": a2}
    qs = quantus.RandomLogit(
        num_classes=2,
        similarity_func=quantus.similarity_func.correlation_spearman,
        normalise=False,
        disable_warnings=True,
    )(explain_func=_explain(method, two), **kw)
    rows2 = Sanity(layers="blocks").update(batch2, att2, two, method=method)
    assert [r["random_logit_class"] for r in rows2] == (1 - att2.targets).tolist()
    assert np.abs(np.asarray(qs) - [r["random_logit_spearman"] for r in rows2]).max() <= TOL
    # pinned: Quantus' SSIM is taken on the flattened (1-D) maps as they are; ours on the 2-D map, min-max
    # scaled. Its number is our SSIM applied to the flattened unscaled maps.
    qssim = quantus.RandomLogit(num_classes=2, normalise=False, disable_warnings=True)(
        explain_func=_explain(method, two), **kw
    )
    flipped = method(two, batch2, 1 - att2.targets).maps.numpy()
    a_flat = att2.maps.numpy().reshape(N, -1)
    assert qssim == pytest.approx([ssim(a_flat[i], flipped[i].ravel()) for i in range(N)], abs=TOL)
    assert [r["random_logit_ssim"] for r in rows2] != pytest.approx(list(qssim), abs=1e-3)


def test_similarity_functions_equal_quantus() -> None:
    rng = np.random.default_rng(2)
    for shape in ((14, 14), (9, 12), (40,)):
        a, b = rng.random(shape), rng.random(shape)
        assert abs(ssim(a, b) - quantus.similarity_func.ssim(a, b)) <= 1e-12
        assert abs(spearman(a, b) - quantus.similarity_func.correlation_spearman(a.ravel(), b.ravel())) <= 1e-12
