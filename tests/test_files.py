"""The one atomic writer (salt_vla/files.py): permissions, no torn or stray files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from salt_vla.files import atomic_path, remove_stale_temps, write_bytes_atomic, write_json_atomic


def test_written_files_are_world_readable_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        p = write_bytes_atomic(tmp_path / "a.bin", b"x")
        q = tmp_path / "m.safetensors"
        with atomic_path(q) as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
    assert q.stat().st_mode & 0o777 == 0o644, "an exported encoder must be readable by teammates"
    assert write_bytes_atomic(tmp_path / "k", b"z", mode=0o600).stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = write_json_atomic(tmp_path / "config.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_temp_names_are_unique_and_in_the_target_folder(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ckpt.pt"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == target.parent
        a.write_bytes(b"1")
        b.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer writer finished last


def test_remove_stale_temps_removes_only_temp_files(tmp_path: Path) -> None:
    keep = write_bytes_atomic(tmp_path / "ckpt.pt", b"ok")
    stale = tmp_path / ".ckpt.pt.tmp-1234-abcd"
    stale.write_bytes(b"partial")
    other = tmp_path / ".hidden"
    other.write_bytes(b"user file")
    assert remove_stale_temps(tmp_path) == [stale]
    assert keep.exists() and other.exists() and not stale.exists()
