"""A 2-process torchrun (gloo, CPU) build writes the same bytes as a 1-process build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE_BUILD_ARGS
from test_cache_resume import assert_same_store


@pytest.mark.slow
def test_two_rank_gloo_build_equals_one_process_build(
    cache_data_root: Path, cache_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "salt_vla", "cache", "build", str(cache_data_root), *CACHE_BUILD_ARGS,
           "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # each rank built only its own shards: i % 2 == rank
    assert "[rank 0/2] 2 shards: 0 committed, 2 to build" in res.stderr, res.stderr
    assert "[rank 1/2] 2 shards: 0 committed, 2 to build" in res.stderr, res.stderr
    assert json.loads((out / "cache.json").read_text())["status"] == "complete"
    assert_same_store(out, cache_store)
