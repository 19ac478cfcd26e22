"""Hugging Face ``transformers`` VideoMAE checkpoints -> the official VideoMAEv2 key layout.

The teacher (:mod:`salt_vla.models.teacher`) reads the official layout only, so that the
sha256 a cache records names one file in one layout. `salt teacher convert` turns a
transformers checkpoint (``VideoMAEModel``, ``VideoMAEForVideoClassification`` or the encoder
of ``VideoMAEForPreTraining``; a ``save_pretrained`` directory or its weights file) into that
layout, the inverse of transformers' own ``convert_videomae_to_pytorch.py``:

- ``embeddings.patch_embeddings.projection`` -> ``patch_embed.proj``;
- ``encoder.layer.N.attention.attention.{query,key,value}.weight`` -> ``blocks.N.attn.qkv.weight``
  (concatenated in that order); ``q_bias`` / ``v_bias`` (or, as transformers >= 5 names them
  in memory, ``query.bias`` / ``value.bias``) -> ``blocks.N.attn.q_bias`` / ``v_bias``;
  a ``key.bias`` is dropped: it adds ``q . b`` to every key's score of a query alike, which
  softmax cancels, so dropping it changes nothing; a model without q/v biases gets zeros;
- ``attention.output.dense`` -> ``attn.proj``; ``intermediate.dense`` / ``output.dense`` ->
  ``mlp.fc1`` / ``mlp.fc2``; ``layernorm_before`` / ``layernorm_after`` -> ``norm1`` / ``norm2``;
- ``layernorm`` -> ``norm``, ``fc_norm`` -> ``fc_norm``, ``classifier`` -> ``head`` (kept; the
  teacher ignores them); the ``videomae.`` prefix of the task models is removed;
- dropped: the fixed ``embeddings.position_embeddings`` table and a pre-training decoder
  (``decoder.*``, ``encoder_to_decoder.*``, ``mask_token``).

The converted file is checked by loading it with the teacher's strict key check; numerical
equality with transformers' own forward is tested (tests/test_teacher_convert.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salt_vla.errors import SaltError
from salt_vla.files import write_json_atomic, write_text_atomic
from salt_vla.models.checkpoint import file_sha256, read_state_dict, save_state_dict
from salt_vla.models.teacher import ARCHS, TeacherSpec, load_teacher

HF_PREFIX = "videomae."
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_CONFIG = "config.json"
OFFICIAL_LN_EPS = 1e-6

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_RENAMES = (  # HF suffix within a layer -> official suffix within a block
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
)
_TOP = (  # HF top-level prefix -> official prefix
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("layernorm.", "norm."),
    ("fc_norm.", "fc_norm."),
    ("classifier.", "head."),
)
_DROPPED = re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|"
                      r"embeddings\.position_embeddings$)")
_ATTN = re.compile(r"^attention\.attention\.(query|key|value)\.(weight|bias)$")
_QV_BIAS = re.compile(r"^attention\.attention\.([qv])_bias$")


class ConvertError(SaltError, ValueError):
    """A file that is not a convertible transformers VideoMAE checkpoint; says what it is."""


@dataclass(frozen=True)
class Converted:
    """An official-layout state dict, the source keys dropped and notes for the user."""

    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def looks_like_hf_videomae(keys: list[str] | tuple[str, ...]) -> bool:
    """Whether a state dict's keys follow transformers' VideoMAE layout."""
    return any(k.startswith(HF_PREFIX) or k.startswith("embeddings.patch_embeddings.")
               or ".attention.attention." in k for k in keys)


def hf_to_official(state: dict[str, torch.Tensor], where: str = "<memory>") -> Converted:
    """Rename a transformers VideoMAE state dict to the official VideoMAEv2 keys (module doc)."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    notes: list[str] = []
    unknown: list[str] = []
    attn: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in state.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if _DROPPED.match(name):
            dropped.append(key)
            continue
        m = _LAYER.match(name)
        if m is None:
            new = next((dst + name[len(src):] for src, dst in _TOP if name.startswith(src)), None)
            if new is None:
                unknown.append(key)
            else:
                out[new] = val
            continue
        layer, rest = int(m.group(1)), m.group(2)
        if (a := _ATTN.match(rest)) is not None:
            attn.setdefault(layer, {})[f"{a.group(1)}.{a.group(2)}"] = val
        elif (b := _QV_BIAS.match(rest)) is not None:
            attn.setdefault(layer, {})[{"q": "query", "v": "value"}[b.group(1)] + ".bias"] = val
        else:
            new = next((f"blocks.{layer}.{dst}{rest[len(src):]}" for src, dst in _RENAMES
                        if rest.startswith(src)), None)
            if new is None:
                unknown.append(key)
            else:
                out[new] = val
    if unknown:
        raise ConvertError(f"{where}: keys a VideoMAE encoder does not have: "
                           f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if "patch_embed.proj.weight" not in out or not attn:
        raise ConvertError(f"{where}: no VideoMAE encoder found (no patch embedding or "
                           "attention weights)")
    for layer, parts in sorted(attn.items()):
        missing = [p for p in ("query.weight", "key.weight", "value.weight") if p not in parts]
        if missing:
            raise ConvertError(f"{where}: layer {layer} lacks attention.attention.{missing[0]}")
        pre = f"blocks.{layer}.attn."
        out[pre + "qkv.weight"] = torch.cat([parts["query.weight"], parts["key.weight"],
                                            parts["value.weight"]])
        dim = parts["query.weight"].shape[0]
        for src, dst in (("query.bias", "q_bias"), ("value.bias", "v_bias")):
            out[pre + dst] = parts.get(src, torch.zeros(dim, dtype=parts["query.weight"].dtype))
        if "query.bias" not in parts:
            notes.append(f"layer {layer} has no q/v biases: zeros (exact)")
        if "key.bias" in parts:
            dropped.append(f"encoder.layer.{layer}.attention.attention.key.bias")
            notes.append(f"layer {layer}'s key bias dropped: softmax cancels it (exact)")
    return Converted(out, tuple(dropped), tuple(dict.fromkeys(notes)))


@dataclass(frozen=True)
class TeacherConversion:
    """Where the converted teacher went and what it is."""

    path: Path
    sha256: str
    sha_path: Path
    meta_path: Path
    source: Path
    spec: TeacherSpec
    dropped: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def cache_command(self, data_root: str = "DATA_ROOT") -> str:
        """The `salt cache build` line that uses this teacher."""
        return (f"salt cache build {data_root} --teacher {self.path} --teacher-arch "
                f"{self.spec.arch}")


def _source_files(src: Path) -> tuple[Path, dict[str, Any]]:
    """(weights file, HF config dict or {}) of a save_pretrained directory or a file."""
    folder = src if src.is_dir() else src.parent
    if src.is_dir():
        weights = next((src / n for n in HF_WEIGHT_FILES if (src / n).is_file()), None)
        if weights is None:
            sharded = any(src.glob("*.index.json"))
            raise ConvertError(
                f"{src}: no {' or '.join(HF_WEIGHT_FILES)}"
                + ("; sharded checkpoints are not read: load it with transformers and "
                   "`save_pretrained(dir, max_shard_size='100GB')` first" if sharded else "")
            )
    elif src.is_file():
        weights = src
    else:
        raise ConvertError(f"{src}: no such file or directory; pass a transformers VideoMAE "
                           "checkpoint (a save_pretrained directory or its weights file)")
    config: dict[str, Any] = {}
    if (folder / HF_CONFIG).is_file():
        try:
            config = json.loads((folder / HF_CONFIG).read_text())
        except ValueError as e:
            raise ConvertError(f"{folder / HF_CONFIG}: unreadable ({e})") from None
    return weights, config if config.get("model_type") == "videomae" else {}


def _spec(state: dict[str, torch.Tensor], config: dict[str, Any], where: Path) -> TeacherSpec:
    """The teacher size of a converted state dict (and its HF config, when there is one)."""
    w = state["patch_embed.proj.weight"]
    dim, _, tubelet, patch, _ = w.shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    heads = config.get("num_attention_heads")
    found = [n for n, a in ARCHS.items() if (a.dim, a.depth, a.mlp_hidden) == (dim, depth, hidden)
             and heads in (None, a.heads)]
    if not found:
        raise ConvertError(
            f"{where}: a ViT of width {dim}, {depth} blocks, MLP {hidden}"
            f"{f', {heads} heads' if heads else ''} is no VideoMAEv2 size the teacher knows "
            f"({', '.join(f'{n} {a.dim}/{a.depth}/{a.heads}' for n, a in ARCHS.items())})"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConvertError(f"{where}: hidden_act={config['hidden_act']!r}; VideoMAEv2 uses gelu")
    frames = int(config.get("num_frames", 16))
    size = int(config.get("image_size", 224))
    if frames % tubelet or size % patch:
        frames, size = tubelet * 8, patch * 14
    return TeacherSpec(arch=found[0], num_frames=frames, img_size=size, tubelet=tubelet,
                       patch=patch)


def convert_hf_teacher(src: Path | str, out: Path | str) -> TeacherConversion:
    """Convert a transformers VideoMAE checkpoint at ``src`` into an official VideoMAEv2 file
    at ``out`` (``.pth``, or ``.safetensors`` by suffix), prove that the teacher loads it, and
    record its sha256 (``OUT.sha256``, sha256sum format) and provenance (``OUT.json``)."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    weights, config = _source_files(src)
    state, _, _ = read_state_dict(weights, prefixes=("module.",))
    keys = list(state)
    if "patch_embed.proj.weight" in state:
        raise ConvertError(f"{weights} is already in the official VideoMAEv2 layout: pass it "
                           "to --teacher as it is")
    if not looks_like_hf_videomae(keys):
        raise ConvertError(f"{weights} is not a transformers VideoMAE checkpoint (its keys "
                           f"start with {keys[:4]})")
    conv = hf_to_official(state, str(weights))
    spec = _spec(conv.state, config, weights)
    notes = list(conv.notes)
    eps = config.get("layer_norm_eps")
    if eps is not None and float(eps) != OFFICIAL_LN_EPS:
        notes.append(f"its config says layer_norm_eps={eps}; the teacher uses VideoMAEv2's "
                     f"{OFFICIAL_LN_EPS} (a difference only for near-constant tokens)")
    save_state_dict({k: v.float() for k, v in conv.state.items()}, out)
    try:
        teacher = load_teacher(out, spec)  # the strict key check `salt cache build` does
    except SaltError as e:
        raise ConvertError(f"{out}: the converted file does not load as a teacher: {e}") from e
    sha = file_sha256(out)
    sha_path = write_text_atomic(out.with_name(out.name + ".sha256"), f"{sha}  {out.name}\n")
    meta_path = write_json_atomic(out.with_name(out.name + ".json"), {
        "format": "VideoMAEv2 encoder (official fine-tune key layout, bare state dict)",
        "sha256": sha,
        "teacher_spec": spec.to_dict(),
        "converted_from": {"path": str(weights.resolve()), "sha256": file_sha256(weights),
                           "layout": "transformers VideoMAE", "config": config},
        "dropped_keys": list(conv.dropped),
        "ignored_by_teacher": list(teacher.ignored_keys),
        "notes": notes,
    })
    return TeacherConversion(out, sha, sha_path, meta_path, weights, spec, conv.dropped,
                             tuple(notes))
