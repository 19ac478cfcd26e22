"""``salt cache info``: what a store holds, how far its build got, and what it cost on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from salt_vla.cache.format import SHARD_COMMITTED, read_manifest
from salt_vla.cache.progress import format_bytes
from salt_vla.cache.store_writer import merged_manifest


def _du(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def store_info(root: Path | str) -> dict[str, Any]:
    """Summary of the store at ``root``. A build in progress is summarised from its commit
    records (cache.json is refreshed only every few seconds)."""
    root = Path(root)
    meta = read_manifest(root)
    if meta.get("status") != "complete":
        meta = merged_manifest(root, meta)
    lat, rows, counts = meta["latents"], meta["rows"], meta["counts"]
    committed = [s for s in meta["shards"] if s["status"] == SHARD_COMMITTED]
    checksummed = sum(sum(c is not None for c in s["row_crc32c"]) for s in committed)
    written = counts["written_rows"]
    t = meta["teacher"]
    return {
        "path": str(root),
        "status": meta["status"],
        "rows": rows["count"],
        "videos": len(set(rows["video_id"])),
        "views_per_video": meta["view"]["spec"].get("n_views", 1),
        "written_rows": written,
        "failed_rows": counts["failed_rows"],
        "missing_videos": counts["missing_videos"],
        "shards": f"{len(committed)}/{len(meta['shards'])} committed",
        "checksummed_fraction": checksummed / written if written else 0.0,
        "bytes_on_disk": _du(root),
        "latent_bytes": counts["latent_bytes"],
        "frames_bytes": counts["frames_bytes"],
        "bytes_per_row": (counts["latent_bytes"] + counts["frames_bytes"]) / written
        if written else 0.0,
        "latents": f"[{', '.join(map(str, lat['shape']))}] {lat['dtype']}"
                   + (" with per-token float16 scales" if "scale" in lat else "") + ", grid "
                   f"{'x'.join(map(str, lat['grid']))}, {lat['shard_size']} rows/shard",
        "teacher": f"{t.get('arch')} layer {t.get('layer')} "
                   f"{'target-norm' if t.get('target_norm') else 'raw'} dim {t.get('dim')}, "
                   f"{meta.get('teacher_source')}"
                   + ("" if str(t.get("sha256")).startswith("random:")
                      else f" (sha256 {str(t.get('sha256'))[:16]}...)")
                   + f", {t.get('compute', {}).get('precision')} on "
                     f"{t.get('compute', {}).get('device_type')}",
        "view": f"{meta['view']['hash']} {meta['view']['spec']}",
        "frames": f"{meta['frames']['num_frames']}x{meta['frames']['height']}x"
                  f"{meta['frames']['width']} JPEG q{meta['frames']['jpeg_quality']}",
        "split": meta["split"],
        "tool_version": meta.get("tool_version"),
        "command": " ".join(meta.get("command", [])),
    }


def format_info(info: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`store_info`."""
    b = format_bytes
    return [
        f"cache:        {info['path']}",
        f"status:       {info['status']} ({info['shards']})",
        f"split:        {info['split']}",
        f"rows:         {info['rows']} ({info['videos']} videos x {info['views_per_video']} "
        f"views); {info['written_rows']} written, {info['failed_rows']} failed, "
        f"{info['missing_videos']} videos missing from disk",
        f"checksummed:  {100 * info['checksummed_fraction']:.1f}% of written rows",
        f"on disk:      {b(info['bytes_on_disk'])} (latents {b(info['latent_bytes'])}, frames "
        f"{b(info['frames_bytes'])}; {b(info['bytes_per_row'])} per row)",
        f"latents:      {info['latents']}",
        f"teacher:      {info['teacher']}",
        f"view:         {info['view']}",
        f"frames:       {info['frames']}",
        f"built by:     salt-vla {info['tool_version']}: {info['command']}",
    ]
