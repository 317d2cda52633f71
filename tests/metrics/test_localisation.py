"""Pointing game, relevance mass and rank on hand-built maps whose answer is known (images and text)."""

from __future__ import annotations

import math

import pytest
import torch

from xaibench.core.types import Attribution, Batch
from xaibench.metrics.localisation import (
    PointingGame,
    RelevanceMass,
    RelevanceRank,
    acceptance_region,
    pointing_hits,
    rank_share,
)

H = W = 32


def image_case(maps: torch.Tensor, masks: torch.Tensor, level: str = "pixels") -> tuple[Batch, Attribution]:
    n = len(maps)
    batch = Batch(
        ids=tuple(f"s{i}" for i in range(n)),
        inputs=None,
        labels=torch.zeros(n, dtype=torch.long),
        images=torch.zeros(n, 3, H, W),
        masks=masks,
    )
    attribution = Attribution(
        maps=maps, targets=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 2), level=level
    )
    return batch, attribution


def box_mask() -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.long)
    mask[8:16, 8:20] = 1  # 96 of 1024 pixels
    return mask


def score(runner, batch, attribution) -> list[dict]:
    runner.reset()
    return runner.update(batch, attribution, None)


def test_mask_map_scores_one_inverted_zero_constant_chance() -> None:
    mask = box_mask()
    maps = torch.stack([mask.double(), 1.0 - mask.double(), torch.full((H, W), 0.3, dtype=torch.float64)])
    batch, att = image_case(maps, mask.expand(3, H, W).clone())
    share = 96 / 1024
    pg = score(PointingGame(tolerance=0), batch, att)
    mass = score(RelevanceMass(), batch, att)
    rank = score(RelevanceRank(), batch, att)
    assert [r["hit"] for r in pg] == pytest.approx([1.0, 0.0, share])
    assert [r["energy"] for r in pg] == pytest.approx([1.0, 0.0, share])
    assert [r["mass"] for r in mass] == pytest.approx([1.0, 0.0, share])
    assert [r["rank"] for r in rank] == pytest.approx([1.0, 0.0, share])
    assert [r["constant_map"] for r in rank] == [False, False, True]
    out = RelevanceRank()
    out.update(batch, att, None)
    assert out.compute() == pytest.approx({"rank": (1 + share) / 3, "n": 3, "empty_evidence": 0, "constant_maps": 1})


def test_ties_count_as_a_random_tie_break() -> None:
    mask = box_mask()
    # two tied maxima, one inside the mask and one far outside: the expected hit is 1/2
    m = torch.zeros(H, W, dtype=torch.float64)
    m[10, 10] = m[30, 30] = 1.0
    pg = score(PointingGame(tolerance=0), *image_case(m[None], mask[None]))
    assert pg[0]["hit"] == pytest.approx(0.5)
    # rank with K = 96: 90 mask pixels strictly above, then 12 tied pixels (6 inside) fill the last 6 places
    r = torch.zeros(H, W, dtype=torch.float64)
    inside = mask.flatten().nonzero().flatten()
    outside = (1 - mask).flatten().nonzero().flatten()
    r.view(-1)[inside[:90]] = 2.0
    r.view(-1)[inside[90:]] = 1.0
    r.view(-1)[outside[:6]] = 1.0
    got = score(RelevanceRank(), *image_case(r[None], mask[None]))[0]["rank"]
    assert got == pytest.approx((90 + 6 * 6 / 12) / 96)
    # mass: only positive relevance counts, and a map without any is spread evenly
    neg = -torch.rand(H, W, dtype=torch.float64)
    assert score(RelevanceMass(), *image_case(neg[None], mask[None]))[0]["mass"] == pytest.approx(96 / 1024)
    mixed = torch.where(mask.bool(), 1.0, -5.0).double()
    assert score(RelevanceMass(), *image_case(mixed[None], mask[None]))[0]["mass"] == pytest.approx(1.0)


def test_tolerance_is_torchrays_disk_scaled_with_the_image() -> None:
    mask = torch.zeros(1, 224, 224, dtype=torch.long)
    mask[0, 100:110, 100:110] = 1
    accept = acceptance_region(mask, 15.0)[0]
    assert bool(accept[100, 123]) and not bool(accept[100, 124])  # distance 14 in, 15 out (strict <)
    assert bool(accept[89, 90]) and not bool(accept[88, 89])  # diagonal: sqrt(11² + 10²) < 15 < sqrt(12² + 11²)
    # at 32 x 32 the 15 px tolerance becomes 15 * 32 / 224 = 2.14 px
    m = torch.zeros(H, W, dtype=torch.float64)
    m[8, 22] = 1.0  # 3 px right of the box's last column (19)
    near = torch.zeros(H, W, dtype=torch.float64)
    near[8, 21] = 1.0  # 2 px
    batch, att = image_case(torch.stack([m, near]), box_mask().expand(2, H, W).clone())
    assert [r["hit"] for r in score(PointingGame(), batch, att)] == [0.0, 1.0]


def test_token_maps_are_upsampled_before_scoring() -> None:
    mask = torch.zeros(H, W, dtype=torch.long)
    mask[:16, :16] = 1  # the top-left quarter = token (0, 0) of a 2 x 2 grid
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    batch, att = image_case(tokens, mask[None], level="tokens")
    assert score(PointingGame(tolerance=0), batch, att)[0]["hit"] == 1.0
    assert score(RelevanceRank(), batch, att)[0]["rank"] > 0.9


def test_empty_evidence_is_left_out_and_counted() -> None:
    masks = torch.stack([box_mask(), torch.zeros(H, W, dtype=torch.long)])
    batch, att = image_case(torch.rand(2, H, W, dtype=torch.float64), masks)
    runner = RelevanceMass()
    rows = runner.update(batch, att, None)
    assert math.isnan(rows[1]["mass"]) and not math.isnan(rows[0]["mass"])
    out = runner.compute()
    assert out["n"] == 1 and out["empty_evidence"] == 1 and out["mass"] == pytest.approx(rows[0]["mass"])


def text_case(piece_maps: torch.Tensor, word_index: torch.Tensor, num_words: list[int], rationales) -> tuple:
    n = len(piece_maps)
    batch = Batch(
        ids=tuple(f"d{i}" for i in range(n)),
        inputs=None,
        labels=torch.zeros(n, dtype=torch.long),
        extras={"word_index": word_index, "num_words": torch.tensor(num_words), "rationales": rationales},
    )
    att = Attribution(maps=piece_maps, targets=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 2))
    return batch, att


def test_text_scores_words_against_rationale_spans() -> None:
    # pieces: [CLS] w0 w1 w1 w2 w3 w4 [SEP]; word 1 has two pieces (max taken); evidence = words 1..2
    word_index = torch.tensor([[-1, 0, 1, 1, 2, 3, 4, -1]] * 3)
    evidence = torch.tensor([0.0, 0.0, 0.2, 0.9, 0.8, 0.0, 0.0, 0.0])
    maps = torch.stack([evidence, 1.0 - evidence, torch.full((8,), 0.5)])
    maps[1, 3] = 0.0  # the inverted map: word 1's two pieces both low
    maps[1, 2] = maps[1, 4] = 0.0
    batch, att = text_case(maps, word_index, [5, 5, 5], (((1, 3),),) * 3)
    pg = score(PointingGame(), batch, att)
    assert [r["hit"] for r in pg] == pytest.approx([1.0, 0.0, 2 / 5])
    assert [r["rank"] for r in score(RelevanceRank(), batch, att)] == pytest.approx([1.0, 0.0, 2 / 5])
    assert [r["mass"] for r in score(RelevanceMass(), batch, att)] == pytest.approx([1.0, 0.0, 2 / 5])
    # a word tolerance of 1 accepts the neighbours of the evidence
    shifted = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])  # word 3, next to word 2
    b1, a1 = text_case(shifted, word_index[:1], [5], (((1, 3),),))
    assert score(PointingGame(), b1, a1)[0]["hit"] == 0.0
    assert score(PointingGame(text_tolerance=1), b1, a1)[0]["hit"] == 1.0


def test_text_words_without_a_score_take_no_part() -> None:
    # word 4 was truncated away (no piece): it is evidence, but neither scored nor counted
    word_index = torch.tensor([[-1, 0, 1, 2, 3, -1]])
    maps = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.9, 0.0]])
    batch, att = text_case(maps, word_index, [5], (((3, 5),),))
    assert score(RelevanceRank(), batch, att)[0]["rank"] == 1.0  # K = 1 scored evidence word, ranked first
    assert score(RelevanceMass(), batch, att)[0]["mass"] == pytest.approx(0.9 / 1.5)


def test_bad_input_gets_one_clear_line() -> None:
    batch, att = image_case(torch.rand(1, H, W), box_mask()[None])
    no_masks = Batch(ids=batch.ids, inputs=None, labels=batch.labels, images=batch.images)
    with pytest.raises(ValueError, match="needs evidence masks"):
        PointingGame().update(no_masks, att, None)
    with pytest.raises(ValueError, match="must be >= 0"):
        PointingGame(tolerance=-1)
    two = Attribution(maps=torch.rand(2, H, W), targets=torch.zeros(2, dtype=torch.long), logits=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="2 maps for a batch of 1"):
        RelevanceMass().update(batch, two, None)


def test_batched_equals_one_by_one_and_states_merge() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 4, 4, generator=g, dtype=torch.float64)
    masks = (torch.rand(5, H, W, generator=g) > 0.7).long()
    batch, att = image_case(maps, masks, level="tokens")
    for cls in (PointingGame, RelevanceMass, RelevanceRank):
        whole = cls()
        rows = whole.update(batch, att, None)
        parts = [cls(), cls()]
        single = []
        for i in range(5):
            b, a = image_case(maps[i : i + 1], masks[i : i + 1], level="tokens")
            single += parts[i % 2].update(b, a, None)
        assert single == rows
        parts[0].merge(parts[1].state())
        assert parts[0].compute() == pytest.approx(whole.compute(), rel=1e-12)


def test_helpers_on_edge_cases() -> None:
    valid = torch.ones(1, 4, dtype=torch.bool)
    assert pointing_hits(torch.zeros(1, 4), torch.tensor([[True, False, False, False]]), valid)[0] == 0.25
    assert math.isnan(float(rank_share(torch.rand(1, 4), torch.zeros(1, 4, dtype=torch.bool), valid)[0]))


@pytest.mark.golden
def test_text_localisation_through_the_loop_on_the_golden_bert(tmp_path) -> None:
    from helpers import golden_dir
    from xaibench.core.config import LoopConfig
    from xaibench.core.loop import run_job
    from xaibench.datasets.eraser import EraserMovies
    from xaibench.methods.attention import Rollout
    from xaibench.models.hf_bert import HFBert

    d = golden_dir()
    model = HFBert(
        config_path=str(d / "bert_small_config.json"),
        state_dict_path=str(d / "bert_small_state_dict.pt"),
        vocab_path=str(d / "eraser_synthetic" / "vocab.txt"),
    )
    runners = {"pointing_game": PointingGame(), "relevance_mass": RelevanceMass(), "relevance_rank": RelevanceRank()}
    config = LoopConfig(device="cpu", batch_size=4, spot_check=0, cache_dir=None)
    record = run_job(
        EraserMovies(root=d / "eraser_synthetic" / "data"), model, Rollout(start_layer=0), runners, tmp_path, config
    )
    m = record["metrics"]
    assert m["pointing_game"]["n"] + m["pointing_game"]["empty_evidence"] == record["job"]["n"] == 4
    for name, key in (
        ("pointing_game", "hit"),
        ("pointing_game", "energy"),
        ("relevance_mass", "mass"),
        ("relevance_rank", "rank"),
    ):
        assert 0.0 <= m[name][key] <= 1.0
    header = (tmp_path / "scores.csv").read_text().splitlines()[0]
    assert "pointing_game/hit" in header and "relevance_rank/rank" in header
