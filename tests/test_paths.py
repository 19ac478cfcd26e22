from pathlib import Path

from salt_vla.paths import resolve_cache_dir, resolve_data_root


def test_data_root_precedence(monkeypatch):
    monkeypatch.delenv("SALT_DATA", raising=False)
    assert resolve_data_root(None).path == Path("/mnt/ssv2")
    assert resolve_data_root(None).source == "default"
    monkeypatch.setenv("SALT_DATA", "/env/data")
    assert resolve_data_root(None).path == Path("/env/data")
    assert resolve_data_root("/opt/d").path == Path("/opt/d")
    assert resolve_data_root("/opt/d").source == "--data"


def test_cache_dir_precedence(monkeypatch):
    monkeypatch.delenv("SALT_DATA", raising=False)
    monkeypatch.delenv("SALT_CACHE", raising=False)
    assert resolve_cache_dir(None, None, "train").path == Path("/mnt/ssv2/salt-cache/train")
    assert resolve_cache_dir(None, "/d", "validation").path == Path("/d/salt-cache/validation")
    monkeypatch.setenv("SALT_CACHE", "/env/cache")
    assert resolve_cache_dir(None, "/d", "train").path == Path("/env/cache")
    assert resolve_cache_dir("/c", "/d", "train").path == Path("/c")
