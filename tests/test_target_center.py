"""Stage-2 targets centred per clip: what is left is what differs between a clip's tokens."""

from __future__ import annotations

import pytest
import torch

from salt_vla.trainer.build import build_model
from salt_vla.trainer.experiments import ConfigError, resolve
from salt_vla.trainer.objective import center_targets


def test_center_targets_removes_the_clip_code_and_keeps_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    code = 10 * torch.randn(3, 1, 8, generator=g)  # one code per clip, as a tiny teacher's
    local = torch.randn(3, 5, 8, generator=g)
    out = center_targets(code + local)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pow(2).mean(dim=(1, 2)), torch.ones(3))
    want = local - local.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, want / want.pow(2).mean(dim=(1, 2), keepdim=True).sqrt())


def test_target_center_key_reaches_the_model() -> None:
    assert build_model(resolve("tiny"), 8, 64).target_center == "none"
    assert build_model(resolve("tiny", ["target_center=clip"]), 8, 64).target_center == "clip"
    with pytest.raises(ConfigError, match="target_center"):
        resolve("tiny", ["target_center=batch"])
