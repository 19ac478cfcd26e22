"""Masks: V-JEPA block rules, ratio statistics, coverage, collation and reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from salt_vla.masking import MaskCollator, MaskConfig, sample_masks
from salt_vla.masking.blocks import BlockSize, draw_block_size
from salt_vla.masking.config import VJEPA_GROUPS, BlockGroup
from salt_vla.masking.sampling import batch_block_sizes, sample_group_masks
from salt_vla.models.grid import TokenGrid, token_grid

GRID = token_grid(16, 224)  # 8 x 14 x 14, the user's grid
TINY = TokenGrid(4, 4, 4)
STRATEGIES = ("multiblock", "ratio", "tube", "random")


class _FixedUniform:
    """Stands in for a Generator whose uniform draws we choose."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def _cfg(strategy: str, ratio: float = 0.9, **kw) -> MaskConfig:
    return MaskConfig(strategy=strategy, ratio=ratio, **kw)


# --- config --------------------------------------------------------------------------


def test_defaults_are_vjepa_pretrain_groups():
    cfg = MaskConfig()
    assert cfg.strategy == "multiblock" and cfg.num_groups == 2
    assert [(g.num_blocks, g.spatial_scale) for g in cfg.groups] == [
        (8, (0.15, 0.15)),
        (2, (0.7, 0.7)),
    ]
    for g in cfg.groups:
        assert g.aspect_ratio == (0.75, 1.5) and g.temporal_scale == (1.0, 1.0)
    assert cfg.groups == VJEPA_GROUPS


def test_config_json_round_trip():
    cfg = _cfg("ratio", 0.75, truncate="random")
    back = MaskConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"strategy": "blocks"}, "strategy"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": 0.0}, "ratio"),
        ({"truncate": "head"}, "truncate"),
        ({"groups": (BlockGroup(num_blocks=0),)}, "num_blocks"),
        ({"groups": ()}, "at least one"),
        ({"strategy": "ratio", "ratio_block": BlockGroup(temporal_scale=(0.5, 0.5))}, "temporal"),
        ({"groups": ({"num_blocks": 8, "spatial_scale": (0.7, 0.2)},)}, "spatial_scale"),
    ],
)
def test_bad_config_names_the_field(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MaskConfig(**kwargs)


# --- V-JEPA block-size rule -----------------------------------------------------------


@pytest.mark.parametrize(
    "group, draws, expected",
    [
        # keep = int(196 * 0.15) = 29; ar 0.75: h = round(4.66) = 5, w = round(6.22) = 6
        (BlockGroup(), [0.0, 0.0, 0.0], BlockSize(8, 5, 6)),
        # ar 1.5: h = round(6.60) = 7, w = round(4.40) = 4
        (BlockGroup(), [0.0, 0.0, 1.0], BlockSize(8, 7, 4)),
        # keep = int(196 * 0.7) = 137; ar 1.5: h = round(14.34) = 14, w = round(9.56) = 10
        (BlockGroup(spatial_scale=(0.7, 0.7)), [0.0, 0.0, 1.0], BlockSize(8, 14, 10)),
        # temporal scale 0.5 of 8 steps -> 4; spatial 0.7 at ar 1.0: round(11.70) = 12
        (
            BlockGroup(
                spatial_scale=(0.7, 0.7), aspect_ratio=(1.0, 1.0), temporal_scale=(0.5, 0.5)
            ),
            [0.0, 0.0, 0.0],
            BlockSize(4, 12, 12),
        ),
        # a scale 0.2 .. 0.8 range: u = 0.5 -> 0.5 -> keep 98, ar 1 -> round(9.90) = 10
        (
            BlockGroup(spatial_scale=(0.2, 0.8), aspect_ratio=(1.0, 1.0)),
            [0.0, 0.5, 0.0],
            BlockSize(8, 10, 10),
        ),
    ],
)
def test_block_size_follows_vjepa_rule(group, draws, expected):
    assert draw_block_size(GRID, group, _FixedUniform(draws)) == expected


def test_block_size_is_at_least_one_token_on_tiny_grids():
    group = BlockGroup(spatial_scale=(0.01, 0.01))  # keep = int(16 * 0.01) = 0
    assert draw_block_size(TINY, group, _FixedUniform([0.0, 0.0, 0.0])) == BlockSize(4, 1, 1)


# --- mask geometry ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_context_and_target_partition_all_tokens(strategy):
    cfg = _cfg(strategy, 0.75)
    for index in range(20):
        for ctx, tgt in sample_masks(cfg, GRID, seed=3, epoch=1, index=index, batch_key=0):
            assert ctx.dtype == np.int64 and tgt.dtype == np.int64
            assert np.all(np.diff(ctx) > 0) and np.all(np.diff(tgt) > 0), "indices not sorted"
            assert len(np.intersect1d(ctx, tgt)) == 0, "context and target overlap"
            assert np.array_equal(np.union1d(ctx, tgt), np.arange(GRID.num_tokens))
            assert len(ctx) >= 1 and len(tgt) >= 1


@pytest.mark.parametrize("strategy", ["multiblock", "ratio", "tube"])
def test_masks_span_all_time_steps(strategy):
    sizes = batch_block_sizes(_cfg(strategy), GRID, 0, 0, 0)
    for index in range(20):
        for m in sample_group_masks(_cfg(strategy), GRID, sizes, 0, 0, index):
            for t in range(1, GRID.t):
                assert np.array_equal(m.target[t], m.target[0]), f"{strategy}: t={t} differs"


def test_random_masks_differ_across_time():
    # the check above must be able to fail: random token masks do differ between steps
    (m,) = sample_group_masks(_cfg("random"), GRID, [None], 0, 0, 0)
    assert not all(np.array_equal(m.target[t], m.target[0]) for t in range(GRID.t))


def test_multiblock_target_is_union_of_batch_sized_blocks():
    cfg = MaskConfig()
    sizes = batch_block_sizes(cfg, GRID, seed=1, epoch=0, batch_key=0)
    for index in range(16):
        masks = sample_group_masks(cfg, GRID, sizes, 1, 0, index)
        for spec, size, m in zip(cfg.groups, sizes, masks, strict=True):
            assert len(m.blocks) == spec.num_blocks
            union = np.zeros(GRID.as_tuple(), dtype=bool)
            for b in m.blocks:
                assert (b.t, b.h, b.w) == (size.t, size.h, size.w), "block size not the batch's"
                assert b.y0 + b.h <= GRID.h and b.x0 + b.w <= GRID.w and b.t0 + b.t <= GRID.t
                union[b.slices()] = True
            assert np.array_equal(union, m.target)


def test_block_size_drawn_once_per_batch_positions_per_sample():
    cfg = MaskConfig()
    sizes = batch_block_sizes(cfg, GRID, 0, 0, batch_key=5)
    a = sample_group_masks(cfg, GRID, sizes, 0, 0, 5)
    b = sample_group_masks(cfg, GRID, sizes, 0, 0, 6)
    assert not np.array_equal(a[0].target, b[0].target), "two samples got the same positions"
    keys = {tuple(batch_block_sizes(cfg, GRID, 0, 0, batch_key=k)) for k in range(40)}
    assert len(keys) > 1, "block size never changes between batches"


def test_multiblock_redraws_until_context_is_large_enough():
    # 4 one-token blocks on a 2x2 plane cover it completely about 1 draw in 10
    cfg = MaskConfig(
        groups=(BlockGroup(num_blocks=4, spatial_scale=(0.5, 0.5), aspect_ratio=(1.0, 1.0)),),
        min_context=2,
    )
    grid = TokenGrid(1, 2, 2)
    for index in range(100):
        ((ctx, tgt),) = sample_masks(cfg, grid, 0, 0, index)
        assert len(ctx) >= 2


def test_multiblock_that_cannot_leave_context_fails_clearly():
    cfg = MaskConfig(
        groups=(BlockGroup(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0)),),
        max_tries=5,
    )
    with pytest.raises(ValueError, match="min_context"):
        sample_masks(cfg, TokenGrid(2, 3, 3), 0, 0, 0)


# --- ratios ------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.75, 0.9])
def test_ratio_mode_hits_ratio_on_average_with_whole_blocks(ratio):
    cfg = _cfg("ratio", ratio)
    realised = []
    full = placed = 0
    for start in range(0, 160, 32):
        sizes = batch_block_sizes(cfg, GRID, 0, 0, start)
        for index in range(start, start + 32):
            (m,) = sample_group_masks(cfg, GRID, sizes, 0, 0, index)
            realised.append(m.ratio)
            union = np.zeros(GRID.as_tuple(), dtype=bool)
            for b in m.blocks:
                assert b.t == GRID.t and b.t0 == 0, "ratio block does not span all time"
                assert b.h <= sizes[0].h and b.w <= sizes[0].w
                union[b.slices()] = True
            assert np.array_equal(union, m.target), "ratio mask is not a union of its blocks"
            full += sum((b.h, b.w) == (sizes[0].h, sizes[0].w) for b in m.blocks)
            placed += len(m.blocks)
    assert abs(np.mean(realised) - ratio) <= 0.02, f"mean realised ratio {np.mean(realised):.4f}"
    # only the blocks cut to land on the ratio (about one per mask) are smaller
    assert full / placed > 0.8, f"only {full}/{placed} blocks have the batch's block size"


@pytest.mark.parametrize("strategy", ["tube", "random"])
@pytest.mark.parametrize("ratio", [0.75, 0.9])
def test_tube_and_random_counts_are_exact(strategy, ratio):
    for index in range(10):
        ((ctx, tgt),) = sample_masks(_cfg(strategy, ratio), GRID, 0, 0, index)
        unit = GRID.t if strategy == "tube" else 1
        total = GRID.num_tokens // unit
        assert len(tgt) == unit * round(ratio * total)


def test_multiblock_groups_differ_in_scale():
    # V-JEPA's long-range group (2 x 0.7) masks more than the short-range one (8 x 0.15)
    cfg = MaskConfig()
    r = np.array(
        [
            [
                m.ratio
                for m in sample_group_masks(
                    cfg, GRID, batch_block_sizes(cfg, GRID, 0, 0, i), 0, 0, i
                )
            ]
            for i in range(64)
        ]
    )
    assert r[:, 1].mean() > r[:, 0].mean()


# --- reproducibility ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masks_are_a_function_of_seed_epoch_index(strategy):
    cfg = _cfg(strategy)

    def draw(seed, epoch, index):
        return sample_masks(cfg, GRID, seed, epoch, index, batch_key=0)

    def same(a, b):
        return all(
            np.array_equal(x, y)
            for pa, pb in zip(a, b, strict=True)
            for x, y in zip(pa, pb, strict=True)
        )

    assert same(draw(0, 0, 7), draw(0, 0, 7))
    assert not same(draw(0, 0, 7), draw(0, 1, 7)), "epoch does not change the masks"
    assert not same(draw(0, 0, 7), draw(1, 0, 7)), "seed does not change the masks"
    assert not same(draw(0, 0, 7), draw(0, 0, 8)), "index does not change the masks"


class _Clips(Dataset):
    def __init__(self, n: int, epoch: int) -> None:
        self.n, self.epoch = n, epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "epoch": self.epoch, "x": torch.full((2,), float(i))}


def _loader_masks(num_workers: int, cfg: MaskConfig) -> list:
    loader = DataLoader(
        _Clips(24, epoch=2),
        batch_size=6,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        collate_fn=MaskCollator(cfg, GRID, seed=11),
    )
    return [(b["index"], b["masks"]) for b in loader]


def test_collated_masks_do_not_depend_on_worker_count():
    cfg = MaskConfig()
    one, two = _loader_masks(0, cfg), _loader_masks(2, cfg)
    assert len(one) == len(two) == 4
    for (ia, ma), (ib, mb) in zip(one, two, strict=True):
        assert torch.equal(ia, ib), "sampler order differs; the test itself is broken"
        for (ca, ta), (cb, tb) in zip(ma, mb, strict=True):
            assert torch.equal(ca, cb) and torch.equal(ta, tb), "masks differ with 2 workers"


# --- collation ---------------------------------------------------------------------------


def _samples(indices, epoch=0):
    return [{"index": i, "epoch": epoch, "x": torch.ones(3) * i, "id": f"v{i}"} for i in indices]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("truncate", ["tail", "random"])
def test_collator_equalises_counts(strategy, truncate):
    cfg = _cfg(strategy, 0.75, truncate=truncate)
    indices = [9, 4, 17, 30, 5]
    batch = MaskCollator(cfg, GRID, seed=2)(_samples(indices))
    assert batch["x"].shape == (5, 3) and batch["id"] == [f"v{i}" for i in indices]
    assert batch["index"].tolist() == indices
    assert len(batch["masks"]) == cfg.num_groups
    for g, (ctx, tgt) in enumerate(batch["masks"]):
        assert ctx.dtype == torch.long and tgt.dtype == torch.long
        assert ctx.shape[0] == tgt.shape[0] == 5
        full = [sample_masks(cfg, GRID, 2, 0, i, batch_key=min(indices))[g] for i in indices]
        assert ctx.shape[1] == min(len(c) for c, _ in full)
        assert tgt.shape[1] == min(len(t) for _, t in full)
        for row, (c, t) in enumerate(full):
            kc, kt = ctx[row].numpy(), tgt[row].numpy()
            assert np.all(np.diff(kc) > 0) and np.all(np.diff(kt) > 0)
            assert np.isin(kc, c).all() and np.isin(kt, t).all(), "kept index not in the mask"
            if truncate == "tail":
                assert np.array_equal(kc, c[: len(kc)]) and np.array_equal(kt, t[: len(kt)])


def test_random_truncation_is_deterministic_and_spread():
    def masks(truncate):
        collate = MaskCollator(MaskConfig(truncate=truncate), GRID, seed=0)
        return collate(_samples(range(8)))["masks"]

    a, b = masks("random"), masks("random")
    assert all(
        torch.equal(x, y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True)
    )
    # the long-range group loses most of its context: tail truncation keeps early time steps,
    # random truncation keeps tokens from the whole clip
    tail_t = (masks("tail")[1][0] // GRID.per_frame).float().mean()
    rand_t = (a[1][0] // GRID.per_frame).float().mean()
    assert rand_t > tail_t + 0.5, f"mean kept time step random {rand_t:.2f}, tail {tail_t:.2f}"


def test_collator_rejects_samples_without_index():
    with pytest.raises(KeyError, match="index"):
        MaskCollator(MaskConfig(), GRID)([{"epoch": 0, "x": torch.zeros(1)}])


def test_collator_batch_key_can_be_explicit():
    cfg = MaskConfig()
    col = MaskCollator(cfg, GRID, seed=0)
    targets = []
    for key in range(6):
        got = col.collate(_samples([3]), batch_key=key)["masks"]
        want = sample_masks(cfg, GRID, 0, 0, 3, batch_key=key)
        for (c, t), (wc, wt) in zip(got, want, strict=True):
            assert np.array_equal(c[0].numpy(), wc) and np.array_equal(t[0].numpy(), wt)
        targets.append(got[0][1].shape[1])
    assert len(set(targets)) > 1, "the batch key does not change the block size"


# --- CLI ----------------------------------------------------------------------------------


def test_cli_preview_json_and_png(tmp_path):
    from typer.testing import CliRunner

    from salt_vla.cli import app

    png = tmp_path / "masks.png"
    args = ["masks", "preview", "--n", "64", "--batch", "16", "--frames", "8", "--size", "64"]
    res = CliRunner().invoke(app, [*args, "--json", "--png", str(png)])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["grid"] == [4, 4, 4] and len(stats["groups"]) == 2
    assert 0.0 < stats["groups"][0]["ratio"]["mean"] < 1.0
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats["png"] == str(png.resolve())

    res = CliRunner().invoke(app, [*args[:-4], "--strategy", "ratio", "--ratio", "0.75"])
    assert res.exit_code == 0, res.output
    assert "realised ratio" in res.output and "after collation" in res.output


def test_cli_preview_rejects_bad_strategy():
    from typer.testing import CliRunner

    from salt_vla.cli import app

    res = CliRunner().invoke(app, ["masks", "preview", "--strategy", "blocks", "--n", "4"])
    assert res.exit_code != 0 and "strategy" in res.output


# --- temporal-split masks (predict later time steps from earlier ones) ----------------


def test_temporal_masks_split_the_clip_in_time_once_per_batch():
    cfg = _cfg("temporal")
    col = MaskCollator(cfg, TINY, seed=0)
    seen = set()
    for b in range(40):
        batch = col([{"index": 8 * b + i, "epoch": 0} for i in range(8)])
        (ctx, tgt), = batch["masks"]
        assert ctx.shape[0] == tgt.shape[0] == 8
        assert ctx.shape[1] + tgt.shape[1] == TINY.num_tokens  # nothing dropped
        steps_c = set((ctx // TINY.per_frame).unique().tolist())
        steps_t = set((tgt // TINY.per_frame).unique().tolist())
        assert not steps_c & steps_t and steps_c | steps_t == set(range(TINY.t))
        k = len(steps_c)
        forward = steps_c == set(range(k))
        assert forward or steps_c == set(range(TINY.t - k, TINY.t))  # one end of the clip
        assert all(torch.equal(ctx[0], row) for row in ctx)  # one split for the whole batch
        seen.add((k, forward))
    assert seen == {(k, f) for k in (1, 2, 3) for f in (True, False)}  # every split occurs


def test_forward_temporal_masks_always_predict_the_future():
    cfg = _cfg("temporal", temporal_direction="forward")
    for key in range(30):
        (ctx, tgt), = sample_masks(cfg, TINY, seed=1, epoch=0, index=key)
        assert ctx.max() < tgt.min()


def test_temporal_group_is_appended_and_leaves_the_other_groups_unchanged():
    plain = _cfg("multiblock")
    extra = _cfg("multiblock", temporal_group=True)
    assert extra.num_groups == plain.num_groups + 1
    for index in range(10):
        a = sample_masks(plain, TINY, seed=3, epoch=1, index=index)
        b = sample_masks(extra, TINY, seed=3, epoch=1, index=index)
        assert len(b) == len(a) + 1
        for (ca, ta), (cb, tb) in zip(a, b[:-1], strict=True):
            np.testing.assert_array_equal(ca, cb)
            np.testing.assert_array_equal(ta, tb)
        ctx, tgt = b[-1]
        assert len(np.unique(ctx // TINY.per_frame)) + len(np.unique(tgt // TINY.per_frame)) \
            == TINY.t
    with pytest.raises(ValueError, match="temporal_group"):
        _cfg("temporal", temporal_group=True)
    with pytest.raises(ValueError, match="temporal_direction"):
        _cfg("ratio", temporal_direction="backward")


def test_trainer_keys_build_temporal_masks_and_partial_time_blocks():
    from salt_vla.trainer.build import mask_config
    from salt_vla.trainer.experiments import ConfigError, resolve
    from salt_vla.trainer.teacher_experiments import resolve_teacher

    assert mask_config(resolve("tiny")) == MaskConfig(strategy="ratio", ratio=0.75)
    cfg = mask_config(resolve("tiny", ["mask_temporal_group=true",
                                       "mask_temporal_direction=forward"]))
    assert cfg.temporal_group and cfg.temporal_direction == "forward" and cfg.num_groups == 2
    teacher = mask_config(resolve_teacher("teacher-tiny", ["mask_temporal_scale=0.5,0.5"]))
    assert all(g.temporal_scale == (0.5, 0.5) for g in teacher.groups)
    sizes = batch_block_sizes(teacher, TINY, 0, 0, 0)
    assert [s.t for s in sizes] == [2, 2]  # blocks cover 2 of the 4 time steps
    for gm in sample_group_masks(teacher, TINY, sizes, 0, 0, 0):
        assert gm.blocks and all(b.t == 2 for b in gm.blocks)
    with pytest.raises(ConfigError, match="mask_temporal_direction"):
        resolve("tiny", ["mask_temporal_direction=sideways"])


def test_temporal_max_context_bounds_the_context_steps():
    cfg = _cfg("temporal", temporal_max_context=1)
    seen = set()
    for key in range(40):
        (ctx, tgt), = sample_masks(cfg, TINY, seed=2, epoch=0, index=key)
        steps = np.unique(ctx // TINY.per_frame)
        assert len(steps) == 1 and steps[0] in (0, TINY.t - 1)  # one tubelet at either end
        seen.add(int(steps[0]))
    assert seen == {0, TINY.t - 1}
    with pytest.raises(ValueError, match="temporal_max_context"):
        _cfg("temporal", temporal_max_context=-1)
