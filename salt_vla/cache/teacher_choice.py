"""Which teacher arch and view a build uses: what the user asked for, else what the teacher
recorded about itself, else the defaults (ViT-B, ``ssv2-16x224``).

`salt teacher export` (and the end of `salt teacher train`) writes ``<checkpoint>.json`` next
to the exported teacher: its :class:`~salt_vla.models.teacher.TeacherSpec` (arch, frames,
size, tubelet, patch) and the view preset it was trained on. VideoMAEv2's position table is a
fixed sinusoid, not a weight, so the checkpoint itself loads at any clip size: without the
record, an 8x64 teacher would silently build a 16x224 store. So the record fills in whatever
the command line left out, and an explicit option that contradicts it (another arch, another
clip shape) is an error naming both. Options that do not change what the teacher was trained
for (view count, augmentation, layer, target norm) are the user's to choose.

Works for any spelling of the teacher option: it takes the teacher source string (a path or
``random:ARCH:SEED``) and the explicit values, None for "not given".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_vla.cache.store_writer import CacheBuildError
from salt_vla.models.teacher import RANDOM_PREFIX

DEFAULT_TEACHER_ARCH = "vit_base"
DEFAULT_VIEW_PRESET = "ssv2-16x224"
RECORD_SUFFIX = ".json"


def teacher_record_path(checkpoint: Path | str) -> Path:
    """``teacher.pth`` -> ``teacher.pth.json``: where an exported teacher's record lives."""
    p = Path(checkpoint)
    return p.with_name(p.name + RECORD_SUFFIX)


@dataclass(frozen=True)
class TeacherRecord:
    """What an exported stage-1 teacher says about itself (``<checkpoint>.json``)."""

    path: Path
    arch: str
    num_frames: int
    img_size: int
    tubelet: int = 2
    patch: int = 16
    view: str | None = None  # the view preset it was trained on

    @property
    def shape(self) -> str:
        return f"{self.num_frames} frames x {self.img_size} px"


def read_teacher_record(source: str | Path) -> TeacherRecord | None:
    """The record next to checkpoint ``source``; None for ``random:`` sources and for
    checkpoints without one (an official VideoMAEv2 file). A record that exists but cannot
    be read is an error: silently ignoring it would bring back the wrong-shape build."""
    if str(source).startswith(RANDOM_PREFIX):
        return None
    path = teacher_record_path(source)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        spec = meta["teacher_spec"]
        return TeacherRecord(path, str(spec["arch"]), int(spec["num_frames"]),
                             int(spec["img_size"]), int(spec.get("tubelet", 2)),
                             int(spec.get("patch", 16)), meta.get("view"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheBuildError(
            f"{path} (the record of teacher {source}) is unreadable ({type(e).__name__}: {e}); "
            f"re-export it with `salt teacher export`, or move it away to use the command-line "
            f"options alone"
        ) from None


@dataclass(frozen=True)
class TeacherChoice:
    """The arch, view and token geometry a build uses, and one line per value saying where
    it came from (printed before the build)."""

    arch: str
    view: Any  # salt_vla.data.view.ViewSpec
    tubelet: int = 2
    patch: int = 16
    record: TeacherRecord | None = None
    notes: list[str] = field(default_factory=list)


# The view fields that fix the teacher's input shape, and the options that set them.
_SHAPE_FLAGS = {"num_frames": "--frames", "size": "--size"}


def _given(overrides: dict[str, Any]) -> list[str]:
    return [k for k, v in overrides.items() if v is not None]


def choose_teacher(source: str, arch: str | None = None, view_preset: str | None = None,
                   **view_overrides: Any) -> TeacherChoice:
    """Arch and view for a build of teacher ``source``. ``arch`` / ``view_preset`` are the
    explicit command-line values (None: not given); ``view_overrides`` the ViewSpec field
    overrides (``num_frames=``, ``size=``, ..., None: not given).

    Raises CacheBuildError when an explicit value contradicts the teacher's record.
    """
    from salt_vla.data.view import VIEW_PRESETS, ViewSpec

    record = read_teacher_record(source)
    if record is None:
        view = ViewSpec.from_preset(view_preset or DEFAULT_VIEW_PRESET, **view_overrides)
        return TeacherChoice(arch or DEFAULT_TEACHER_ARCH, view)
    notes = [f"teacher record: {record.path}: {record.arch}, trained at {record.shape}"
             + (f" (view {record.view})" if record.view else "")]
    if arch is not None and arch != record.arch:
        raise CacheBuildError(
            f"--teacher-arch {arch} conflicts with teacher {source}: it is a {record.arch} "
            f"(recorded in {record.path}); leave --teacher-arch out to use the recorded arch"
        )
    if view_preset is None:
        if record.view in VIEW_PRESETS:
            base, why = record.view, "the teacher's (recorded)"
        else:  # a preset this version does not know: keep the shape, default the rest
            base, why = DEFAULT_VIEW_PRESET, f"{DEFAULT_VIEW_PRESET} at the recorded shape"
            view_overrides = {"num_frames": record.num_frames, "size": record.img_size,
                              **{k: v for k, v in view_overrides.items() if v is not None}}
    else:
        base, why = view_preset, "--view-preset"
    view = ViewSpec.from_preset(base, **view_overrides)
    if (view.num_frames, view.size) != (record.num_frames, record.img_size):
        asked = [f"--view-preset {view_preset}"] if view_preset else []
        asked += [f"{_SHAPE_FLAGS[k]} {view_overrides[k]}"
                  for k in _given(view_overrides) if k in _SHAPE_FLAGS]
        raise CacheBuildError(
            f"{' '.join(asked) or 'the view'} ({view.num_frames} frames x {view.size} px) "
            f"conflicts with teacher {source}: it was trained at {record.shape}"
            + (f" (view {record.view}" if record.view else " (")
            + f", recorded in {record.path}). Leave the view options out to build at the "
            f"teacher's own view, or pass a view of {record.shape}"
        )
    notes.append(f"arch {record.arch} ({'--teacher-arch' if arch else 'recorded'}), view "
                 f"{base} ({why})" + (f" with {', '.join(_given(view_overrides))} overridden"
                                      if _given(view_overrides) and view_preset else ""))
    return TeacherChoice(record.arch, view, record.tubelet, record.patch, record, notes)
