"""`salt export`: the student of a training run, out of its checkpoint and into a product.

``export_encoder(RUN, DIR)`` writes the directory layout of :mod:`salt_vla.export.format`
(``model.safetensors`` + ``config.json`` + ``README.md``, every file 0644 so teammates on a
shared disk can read it); ``export_encoder(RUN, FILE.safetensors)`` the single file (+
``FILE.json``). The predictor and optimiser state stay behind: a policy needs only the
encoder. The weights are the student's under timm's ViT names
(:mod:`salt_vla.models.video_vit`); the config records the architecture (described by the
standard ViT names: a salt-vla size preset may not be what its name suggests), the view,
the token grid and the provenance: run, checkpoint sha256, step, the teacher whose latents
it learned (sha256) and the store they were read from (its identity digest). The model card
lists the probe results the run holds (``RUN_DIR/probe*.json``), each marked with which
encoder it measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from salt_vla import __version__
from salt_vla.errors import SaltError
from salt_vla.eval.probe_run import read_probe_result
from salt_vla.export.format import (
    CARD_NAME,
    CONFIG_FILE,
    FORMAT,
    METADATA_KEY,
    VERSION,
    WEIGHTS_NAME,
    ExportError,
    describe_size,
)
from salt_vla.export.load import default_time_positions
from salt_vla.files import atomic_path, write_json_atomic, write_text_atomic
from salt_vla.models.checkpoint import file_sha256
from salt_vla.models.pixels import IMAGENET_MEAN, IMAGENET_STD
from salt_vla.models.video_vit import VideoViT, VideoViTConfig, student_to_vit_keys
from salt_vla.runs.rundir import (
    ENCODER_NAME,
    ENCODER_SUFFIX,
    PROBE_GLOB,
    RunDirError,
    is_export_dir,
    read_run_config,
    resolve_run_path,
)

DIR_MODE = 0o755  # a directory we create: readable by teammates whatever the umask
KEYS_DOC = ("timm VisionTransformer names (class_token=False, global_pool='avg', "
            "fc_norm=False): patch_embed.proj is a Conv3d [D, 3, tubelet, patch, patch]; "
            "pos_embed [1, N, D] is the fixed 3-D sin-cos table of the native grid (recomputed "
            "for other grids); blocks.{i}.* are timm Blocks; norm is the final LayerNorm")


@dataclass(frozen=True)
class ExportResult:
    """Where the export went: ``path`` (the directory, or the single file), its weights, its
    config file (config.json or the sidecar), the model card (None for a single file)."""

    path: Path
    weights: Path
    config_path: Path
    card: Path | None
    config: dict[str, Any]
    num_params: int
    probes: int  # probe results listed in the card


def _run_view(cfg: Any, run_dir: Path, meta: dict[str, Any]) -> Any:
    """The view the run trained on: its preset, or the store's own view (``view="store"``)."""
    from salt_vla.cache.format import read_manifest
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.build import STORE_VIEW, view_spec

    store_view = None
    if cfg.view == STORE_VIEW:
        cache = meta.get("data", {}).get("cache")
        try:
            store_view = read_manifest(cache)["view"]
        except (SaltError, TypeError, KeyError) as e:
            raise ExportError(
                f"the run {run_dir} trained with view='store' (the cache's own view), but its "
                f"cache {cache!r} cannot be read ({e}); the encoder's frame count and size come "
                "from there, so put the cache back at its recorded path"
            ) from None
    try:
        return view_spec(cfg, store_view)
    except ConfigError as e:
        raise ExportError(f"run {run_dir}: {e}") from None


def _provenance(state: dict[str, Any], cfg: Any, ckpt: Path, ckpt_sha: str, run_dir: Path,
                meta: dict[str, Any]) -> dict[str, Any]:
    """Where the weights came from: the run, the checkpoint, and the data it trained on (the
    teacher's sha256 and the store's identity digest, as the run's config.json records them;
    ``None`` where the run did not record one)."""
    from salt_vla.cache.format import read_manifest

    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    targets = data.get("targets", cfg.targets)
    teacher, store = data.get("teacher"), None
    if data.get("cache"):
        identity = None
        try:
            identity = read_manifest(data["cache"]).get("identity_sha256")
        except SaltError:
            pass  # the store moved or is gone: its path and view hash still say which
        store = {"path": data["cache"], "identity_sha256": identity,
                 "view_hash": data.get("view_hash"), "rows": data.get("rows")}
    teacher_rec = None
    if isinstance(teacher, dict):  # cached targets: the store's record of its teacher
        teacher_rec = {k: teacher.get(k) for k in ("arch", "checkpoint", "sha256", "layer",
                                                   "target_norm", "dim")}
    elif targets == "online":  # the config names the checkpoint; hash it if it is here
        source = str(teacher or cfg.teacher)
        path = Path(source).expanduser()
        sha = (source if source.startswith("random:")
               else file_sha256(path) if path.is_file() else None)
        teacher_rec = {"arch": cfg.teacher_arch, "checkpoint": source, "sha256": sha,
                       "layer": cfg.teacher_layer, "target_norm": cfg.target_norm}
    return {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": ckpt_sha,
        "step": int(state.get("step", 0)),
        "total_steps": int(state.get("total_steps", 0)),
        "exp": cfg.name,
        "targets": targets,
        "teacher": teacher_rec,
        "store": store,
        "train_config": cfg.to_dict(),
        "salt_vla_version": __version__,
    }


def _vit_config(cfg: Any, view: Any, time_mode: str) -> tuple[VideoViTConfig, str]:
    from salt_vla.trainer.build import student_config

    s_cfg = student_config(cfg, view.num_frames, view.size)
    dim, depth, heads = s_cfg.dims
    return VideoViTConfig(embed_dim=dim, depth=depth, heads=heads, num_frames=s_cfg.num_frames,
                          img_size=s_cfg.img_size, tubelet=s_cfg.tubelet, patch=s_cfg.patch,
                          mlp_ratio=s_cfg.mlp_ratio, qkv_bias=s_cfg.qkv_bias,
                          time_positions=time_mode), s_cfg.size


def _config(v: VideoViTConfig, size: str, num_params: int, view: Any, dtype: torch.dtype,
            provenance: dict[str, Any]) -> dict[str, Any]:
    g = v.grid
    shape = f"{v.num_frames}, {v.img_size}, {v.img_size}"
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": {
            "model": "VideoViT (salt_vla.models.video_vit)",
            "description": describe_size(v.embed_dim, v.depth, v.heads, v.patch, v.tubelet),
            "student_size": size,
            "embed_dim": v.embed_dim, "depth": v.depth, "num_heads": v.heads,
            "mlp_ratio": v.mlp_ratio, "qkv_bias": v.qkv_bias,
            "tubelet_size": v.tubelet, "patch_size": v.patch,
            "num_frames": v.num_frames, "img_size": v.img_size,
            "norm_eps": 1e-6, "class_token": False, "global_pool": "avg",
            "pos_embed": "fixed 3-D sin-cos (time | height | width channels), not learned",
            "num_params": num_params,
        },
        "grid": {"t": g.t, "h": g.h, "w": g.w, "num_tokens": g.num_tokens,
                 "order": "time-major: index = t*h*w + y*w + x"},
        "positions": {
            "time": v.time_positions, "space": v.space_positions,
            "note": "where tokens of clips of another shape sit (load_encoder's "
                    "time_positions / space_positions; docs/export.md)",
        },
        "input": {
            "uint8": f"[B, {shape}, 3] RGB frames (training shape; others: see positions)",
            "float": f"[B, 3, {shape}] ImageNet-normalised ((x/255 - mean) / std)",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        },
        "output": {"tokens": "[B, N, D]", "pooled": "[B, D], mean over tokens",
                   "per_frame": "[B, t, h*w, D] (forward_per_frame)"},
        "view": {"spec": view.to_dict(), "hash": view.hash()},
        "dtype": str(dtype).removeprefix("torch."),
        "keys": KEYS_DOC,
        "provenance": provenance,
    }


def _probe_label(rec: dict[str, Any], ckpt_sha: str) -> str:
    """Which encoder a probe record measured, relative to the exported checkpoint."""
    enc = rec.get("encoder", {})
    kind = enc.get("kind")
    if kind == "run":
        if enc.get("sha256") == ckpt_sha:
            return "this encoder"
        return f"this run's student at step {enc.get('step')} (another checkpoint)"
    if kind == "encoder":
        return f"an export of step {enc.get('step')}"
    if kind == "teacher":
        return "the teacher (its target latents; reference)"
    if kind == "random":
        return f"random-init {enc.get('arch')} student (baseline)"
    return str(enc.get("name", "?"))


def _probe_rows(run_dir: Path, ckpt_sha: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(run_dir.glob(PROBE_GLOB)):
        rec = read_probe_result(path)
        if rec is None:
            continue
        rows.append({"file": path.name, "label": _probe_label(rec, ckpt_sha),
                     "probe": rec.get("probe", {}).get("kind", "?"),
                     "data": rec.get("data", "?"), "split": rec.get("val", {}).get("split", "?"),
                     "top1": rec["top1"], "top5": rec.get("top5"), "top5_k": rec.get("top5_k", 5),
                     "val_clips": rec.get("val_clips"), "classes": rec.get("num_classes"),
                     "chance": rec.get("chance")})
    return rows


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


def model_card(config: dict[str, Any], probes: list[dict[str, Any]], sha256: str) -> str:
    """The export's README.md: what it is, how it was trained, what it scored, how to load it."""
    a, g, p = config["architecture"], config["grid"], config["provenance"]
    t, st, view = p.get("teacher") or {}, p.get("store") or {}, config["view"]["spec"]
    lines = [
        f"# salt-vla video encoder: {p['exp']}, step {p['step']} of {p['total_steps']}",
        "",
        "A ViT video encoder trained with SALT (a frozen VideoMAEv2 teacher's latents "
        "predicted at masked positions). Load it with `salt_vla.load_encoder(\"<this "
        "directory>\")`; see salt-vla's docs/export.md.",
        "",
        "| | |", "|---|---|",
        f"| architecture | {a['description']} (salt-vla student size `{a['student_size']}`) |",
        f"| parameters | {a['num_params'] / 1e6:.2f} M, {config['dtype']} |",
        f"| input | {a['num_frames']} frames x {a['img_size']} x {a['img_size']} RGB, "
        f"{view.get('sampling')} sampling, view hash `{config['view']['hash']}` (other "
        f"shapes: positions {config['positions']['time']} in time, "
        f"{config['positions']['space']} in space) |",
        f"| output | {g['t']} x {g['h']} x {g['w']} = {g['num_tokens']} tokens of "
        f"{a['embed_dim']}, time-major; pooled = their mean |",
        f"| weights | `{WEIGHTS_NAME}`, sha256 `{sha256}` |",
        f"| run | `{p['run_dir']}`, checkpoint sha256 `{p['checkpoint_sha256'][:16]}...` |",
        f"| teacher | {t['arch']}, sha256 `{t['sha256']}`, layer {t['layer']} |" if t
        else "| teacher | not recorded (the run's config.json names none) |",
        f"| store | identity `{st['identity_sha256']}` ({st['rows']} rows, `{st['path']}`) |"
        if st else f"| store | none ({p['targets']} targets) |" if p["targets"] == "online"
        else "| store | not recorded (the run's config.json names none) |",
        "",
        "## Probe results found in the run",
        "",
    ]
    if probes:
        lines += ["| encoder | probe | val split | top-1 | top-5 | clips | classes | chance |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['probe']} | {r['split']} | {_pct(r['top1'])} | "
                  f"{_pct(r['top5'])} | {r['val_clips']} | {r['classes']} | {_pct(r['chance'])} |"
                  for r in probes]
        lines += ["", f"From `RUN_DIR/probe*.json` ({', '.join(r['file'] for r in probes)}); "
                  "data root: " + ", ".join(sorted({f'`{r["data"]}`' for r in probes})) + "."]
    else:
        lines.append("None: the run holds no probe result. Probe this export with `salt eval "
                     "probe --encoder <this directory> --data DATA_ROOT`.")
    return "\n".join(lines) + "\n"


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(config)})


def _out_dir(out: Path) -> Path:
    """``out`` as an export directory: created (0755), or an existing empty folder or export;
    never a run directory or another folder, whose files an export would overwrite."""
    if out.is_dir():
        if any(out.iterdir()) and not is_export_dir(out):
            raise ExportError(f"--out {out} is a folder holding other files (a run directory?); "
                              "give a new or empty folder, or an earlier export to replace")
        return out
    if out.exists():
        raise ExportError(f"--out {out} is a file; name a folder, or a *{ENCODER_SUFFIX} file "
                          "for the single-file export")
    out.mkdir(parents=True)
    out.chmod(DIR_MODE)
    return out


def export_encoder(
    run: Path | str, out: Path | str | None = None, dtype: torch.dtype = torch.float32
) -> ExportResult:
    """Export the student of a run directory (its ``ckpt.pt``) or a checkpoint file to
    ``out``: a directory (default ``RUN_DIR/encoder``) or a ``*.safetensors`` file."""
    from salt_vla.errors import ConfigError
    from salt_vla.trainer.checkpoint import CheckpointError, load_checkpoint
    from salt_vla.trainer.experiments import TrainConfig

    try:
        target = resolve_run_path(run, ("run", "checkpoint"))
    except RunDirError as e:
        raise ExportError(f"cannot export {run}: {e}") from None
    ckpt, run_dir = target.file, target.run_dir
    try:
        state = load_checkpoint(ckpt)
        if "student" not in state:
            raise ExportError(f"{ckpt} holds no student (a `salt teacher train` checkpoint? "
                              "export that with `salt teacher export`)")
        cfg = TrainConfig.from_dict(state["config"])
    except (CheckpointError, ConfigError, KeyError) as e:
        raise ExportError(f"cannot export {ckpt}: {e}") from None
    meta = read_run_config(run_dir)[1]
    view = _run_view(cfg, run_dir, meta)
    vit_cfg, size = _vit_config(cfg, view, default_time_positions(view.sampling))
    net = VideoViT(vit_cfg)
    try:
        net.load_state_dict({**student_to_vit_keys(state["student"]),
                             "pos_embed": net.pos_embed}, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{ckpt}: its student weights do not fit the exported network "
                          f"(salt_vla/models/video_vit.py): {e}") from None
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    num_params = sum(p.numel() for p in net.parameters())
    ckpt_sha = file_sha256(ckpt)
    config = _config(vit_cfg, size, num_params, view, dtype,
                     _provenance(state, cfg, ckpt, ckpt_sha, run_dir, meta))
    out = Path(out).expanduser() if out is not None else run_dir / ENCODER_NAME
    if out.suffix == ENCODER_SUFFIX:  # the single self-contained file + a sidecar for people
        _write_weights(out, tensors, config)
        sidecar = write_json_atomic(out.with_suffix(".json"), {
            **config, "weights": out.name, "sha256": file_sha256(out)})
        return ExportResult(out, out, sidecar, None, config, num_params, 0)
    out = _out_dir(out)
    weights = out / WEIGHTS_NAME
    _write_weights(weights, tensors, config)
    sha = file_sha256(weights)
    config_path = write_json_atomic(out / CONFIG_FILE, {**config, "weights": WEIGHTS_NAME,
                                                        "sha256": sha})
    probes = _probe_rows(run_dir, ckpt_sha)
    card = write_text_atomic(out / CARD_NAME, model_card(config, probes, sha))
    return ExportResult(out, weights, config_path, card, config, num_params, len(probes))
