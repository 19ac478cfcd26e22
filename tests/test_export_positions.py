"""Other clip shapes: the fixed sin-cos table recomputed for the new grid, each token where its
mode puts it (docs/export.md, "Other clip shapes"), and the training shape unchanged bit for
bit in every mode.

Positions are read back out of the table itself (the lowest-frequency sin/cos pair of each
axis gives ``angle = position * omega``), so the checks do not re-run the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from salt_vla.errors import ConfigError
from salt_vla.export.load import default_time_positions
from salt_vla.models.grid import TokenGrid
from salt_vla.models.pixels import frames_to_input
from salt_vla.models.posembed import axis_dims, resampled_positions, sincos_pos_embed_3d
from salt_vla.models.student import Student, StudentConfig
from salt_vla.models.video_vit import VideoViT, VideoViTConfig, student_to_vit_keys

DIM = 48  # axis channels 16 | 16 | 16
MODES = [("scaled", "scaled"), ("integer", "integer"), ("integer", "scaled"), ("scaled", "integer")]


def _student() -> Student:
    torch.manual_seed(0)
    student = Student(StudentConfig(size="tiny", num_frames=8, img_size=64, embed_dim=DIM,
                                    depth=2, heads=2)).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student


def _vit(student: Student, time: str, space: str) -> VideoViT:
    vit = VideoViT(VideoViTConfig(embed_dim=DIM, depth=2, heads=2, num_frames=8, img_size=64,
                                  time_positions=time, space_positions=space))
    vit.load_state_dict({**student_to_vit_keys(student.state_dict()), "pos_embed": vit.pos_embed})
    return vit.eval()


def positions_in(table: torch.Tensor, grid: TokenGrid) -> tuple[torch.Tensor, ...]:
    """``(t, y, x)`` positions each axis's table part encodes, from its slowest sin/cos pair."""
    dims = axis_dims(table.shape[1])
    cube = table.double().reshape(grid.t, grid.h, grid.w, -1)
    out, start = [], 0
    for axis, d in enumerate(dims):
        half = d // 2
        omega = 1.0 / 10000.0 ** ((half - 1) / half)
        sin, cos = cube[..., start + half - 1], cube[..., start + d - 1]
        pos = torch.atan2(sin, cos) / omega
        # one value per index along this axis (the table is separable)
        out.append(pos.permute(axis, *[i for i in range(3) if i != axis]).reshape(
            pos.shape[axis], -1)[:, 0])
        start += d
    return tuple(out)


def test_every_mode_gives_the_training_table_and_output_at_the_training_shape() -> None:
    student = _student()
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    x = frames_to_input(frames)
    with torch.no_grad():
        want = student.forward_features(x)
    for time, space in MODES:
        vit = _vit(student, time, space)
        assert torch.equal(vit.position_table(vit.grid), student.pos_embed)
        assert torch.equal(vit.position_table(vit.grid), sincos_pos_embed_3d(DIM, vit.grid))
        with torch.no_grad():
            assert torch.equal(vit.forward_features(x), want), (time, space)


@pytest.mark.parametrize("native,n", [(4, 2), (4, 8), (4, 7), (7, 4), (1, 3)])
def test_scaled_positions_cover_the_training_extent(native: int, n: int) -> None:
    pos = resampled_positions(native, n, "scaled")
    # token i's centre, (i + 0.5) / n of the way through the extent, in training units
    want = torch.tensor([(i + 0.5) * native / n - 0.5 for i in range(n)], dtype=torch.float64)
    torch.testing.assert_close(pos, want, rtol=0, atol=1e-12)
    # the same extent: the first and last token edges are the training grid's edges
    step = native / n
    assert pos[0] - step / 2 == pytest.approx(-0.5) and pos[-1] + step / 2 == pytest.approx(
        native - 0.5)
    torch.testing.assert_close(resampled_positions(native, n, "integer"),
                               torch.arange(n, dtype=torch.float64))


def test_the_table_of_another_grid_encodes_those_positions() -> None:
    student = _student()
    native = TokenGrid(4, 4, 4)
    new = TokenGrid(8, 2, 6)  # 16 frames, a 32 x 96 crop
    for time, space in MODES:
        table = _vit(student, time, space).position_table(new)
        assert table.shape == (new.num_tokens, DIM)
        t, y, x = positions_in(table, new)
        for got, n0, n, mode in ((t, native.t, new.t, time), (y, native.h, new.h, space),
                                 (x, native.w, new.w, space)):
            torch.testing.assert_close(got, resampled_positions(n0, n, mode), rtol=0,
                                       atol=2e-3)
    # integer time: the first native-length part of a longer clip is the training table
    longer = _vit(student, "integer", "scaled").position_table(TokenGrid(8, 4, 4))
    assert torch.equal(longer[: native.num_tokens], student.pos_embed)


def test_other_shapes_run_and_the_mode_matters() -> None:
    student = _student()
    frames = torch.randint(0, 256, (1, 16, 64, 96, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    x = frames_to_input(frames)
    outs = {}
    with torch.no_grad():
        for time, space in MODES:
            outs[time, space] = _vit(student, time, space).forward_features(x)
    assert all(o.shape == (1, 8 * 4 * 6, DIM) and torch.isfinite(o).all() for o in outs.values())
    assert not torch.allclose(outs["scaled", "scaled"], outs["integer", "integer"])
    with pytest.raises(ConfigError, match="does not cut into tubelets"):
        _vit(student, "scaled", "scaled").forward_features(x[:, :, :5])


def test_auto_follows_the_views_frame_sampling() -> None:
    assert default_time_positions("stride") == "integer"  # fixed step: a longer window
    assert default_time_positions("segment") == "scaled"  # spread over the clip: same span
    with pytest.raises(ConfigError, match="choose one of"):
        VideoViTConfig(embed_dim=DIM, depth=1, heads=2, num_frames=8, img_size=64,
                       time_positions="bicubic")
    assert math.isclose(float(resampled_positions(4, 4, "scaled")[3]), 3.0)
