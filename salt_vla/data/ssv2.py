"""Something-Something-v2 index: the split JSON files, labels.json, and where each video lives.

Layouts read as they are (see :func:`find_layout`)::

    flat (ours, and what `salt data synth` writes):
        ROOT/labels.json        {"Approaching something with your camera": "0", ...}
        ROOT/train.json         [{"id": "78687", "label": "holding potato next to vicks ...",
        ROOT/validation.json      "template": "Holding [something] next to [something]",
                                  "placeholders": ["potato", "vicks vaporub bottle"]}, ...]
        ROOT/test.json          [{"id": "1420"}, ...]                 (no labels)
    the dataset's download, unpacked:
        ROOT/labels/{labels,train,validation,test}.json                     (current archive)
        ROOT/something-something-v2-{labels,train,validation,test}.json     (older copies)
    videos, in any of (the first that has a file wins):
        ROOT/<id>.webm,  ROOT/videos/<id>.webm,  ROOT/20bn-something-something-v2/<id>.webm

An entry's class is its template with ``[`` and ``]`` removed, looked up in labels.json: that is
how the dataset's own tooling maps templates to classes. Every problem with the files raises one
exception type, :class:`SSv2Error`, whose message names the file or id and the fix.
"""

from __future__ import annotations

import gc
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from salt_vla.errors import SaltError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
LABELS_FILE = "labels.json"
VIDEO_EXT = ".webm"
VIDEO_SUBDIR = "videos"
# SSv2's download: the videos archive unpacks to this folder, the labels archive to labels/
# (older copies name the files something-something-v2-<name>.json instead).
DOWNLOAD_VIDEO_DIR = "20bn-something-something-v2"
DOWNLOAD_LABELS_DIR = "labels"
DOWNLOAD_PREFIX = "something-something-v2-"
# Where videos are looked for, in order, relative to ROOT ("" is ROOT itself).
VIDEO_DIRS: tuple[str, ...] = ("", VIDEO_SUBDIR, DOWNLOAD_VIDEO_DIR)
# Ids shown in a missing-videos message; the full list is on SplitIndex.missing.
_SHOW_IDS = 5


class SSv2Error(SaltError, ValueError):
    """The dataset's files are missing, malformed or inconsistent; the message says the fix."""


class SSv2MissingVideosWarning(UserWarning):
    """Videos listed in a split are absent and were excluded (``allow_missing=True``)."""


class SSv2Entry(NamedTuple):
    """One video of a split (immutable).

    ``label`` is the class index (None for the unlabeled test split); ``template`` is the
    template as written in the split file, with its ``[something]`` placeholders; ``caption``
    is the split file's free-text ``label`` field (the template filled in with the objects).

    A NamedTuple rather than a frozen dataclass because the index builds 168K of them and a
    frozen dataclass's ``__init__`` costs twice as much (about 0.2 s more per load, measured).
    """

    id: str
    label: int | None
    template: str | None
    placeholders: tuple[str, ...]
    caption: str | None = None


def template_class(template: str) -> str:
    """The labels.json key for a template: ``"Putting [something] on a surface"`` ->
    ``"Putting something on a surface"``."""
    return template.replace("[", "").replace("]", "")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SSv2Error(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class SSv2Layout:
    """Where a root keeps its label files: ``label_dir / (prefix + name + ".json")``.

    ``name`` says which layout it is, for the line every command prints
    (:meth:`SplitIndex.describe`). Videos are looked for in :attr:`video_dirs` whatever the
    layout: they are independent of the label files.
    """

    root: Path
    name: str
    label_dir: Path
    prefix: str = ""

    @property
    def labels_path(self) -> Path:
        return self.label_dir / f"{self.prefix}{LABELS_FILE}"

    def split_path(self, split: str) -> Path:
        """The JSON file of ``split`` in this layout."""
        _check_split(split)
        return self.label_dir / f"{self.prefix}{split}.json"

    @property
    def video_dirs(self) -> tuple[Path, ...]:
        """Folders searched for ``<id>.webm``, in order (see :data:`VIDEO_DIRS`)."""
        return tuple(self.root / d if d else self.root for d in VIDEO_DIRS)

    def label_files(self) -> list[Path]:
        """labels.json and the split files this layout has on disk."""
        files = [self.labels_path, *(self.split_path(s) for s in SPLITS)]
        return [f for f in files if f.is_file()]


def _candidate_layouts(root: Path) -> list[SSv2Layout]:
    """Every label-file layout a root may have, in precedence order (flat first)."""
    labels = root / DOWNLOAD_LABELS_DIR
    return [
        SSv2Layout(root, "flat", root),
        SSv2Layout(root, "SSv2 download, labels/", labels),
        SSv2Layout(root, f"SSv2 download, {DOWNLOAD_PREFIX}*.json", root, DOWNLOAD_PREFIX),
        SSv2Layout(root, f"SSv2 download, labels/{DOWNLOAD_PREFIX}*.json", labels,
                   DOWNLOAD_PREFIX),
    ]


def _same_files(a: SSv2Layout, b: SSv2Layout) -> bool:
    """True when two layouts hold the same label files with the same bytes (a copy)."""
    fa, fb = a.label_files(), b.label_files()
    if [f.name.removeprefix(a.prefix) for f in fa] != [f.name.removeprefix(b.prefix)
                                                      for f in fb]:
        return False
    try:
        return all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb, strict=True))
    except OSError:
        return False


def find_layout(root: Path | str) -> SSv2Layout:
    """Which layout ``root`` has, decided by where its labels file is (see module doc).

    Two layouts at once (say a labels.json copied next to the download's labels/) are
    accepted only when they hold byte-identical files, and then the first in the module
    doc's order is used; otherwise the reader cannot know which to trust, so it refuses and
    names both.
    """
    root = Path(root)
    found = [c for c in _candidate_layouts(root) if c.labels_path.is_file()]
    if not found:
        first, *others = (c.labels_path for c in _candidate_layouts(root))
        hint = (f"the directory {root} does not exist" if not root.is_dir()
                else f"{root} has none of them")
        raise SSv2Error(
            f"labels file not found: {first} (also looked for "
            f"{', '.join(str(o) for o in others)}; {hint}). Point --data (or $SALT_DATA) at the "
            f"SSv2 root: the folder that holds labels.json and the split files, or the one the "
            f"download unpacked labels/ and 20bn-something-something-v2/ into."
        )
    chosen = found[0]
    for other in found[1:]:
        if not _same_files(chosen, other):
            raise SSv2Error(
                f"{root} holds two SSv2 layouts with different files: {chosen.labels_path} "
                f"({chosen.name}) and {other.labels_path} ({other.name}); salt cannot tell "
                f"which is right. Remove (or rename) one set of label files, or point --data "
                f"at a root with only one."
            )
    return chosen


def split_path(root: Path | str, split: str) -> Path:
    """Path of a split's JSON file in ``root``'s layout (``ROOT/train.json`` etc.)."""
    _check_split(split)
    return find_layout(root).split_path(split)


def _read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, turning every failure into an SSv2Error naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = (
            f"the directory {path.parent} does not exist"
            if not path.parent.is_dir()
            else f"{path.parent} has no {path.name}"
        )
        raise SSv2Error(
            f"{what} not found: {path} ({hint}). Point --data (or $SALT_DATA) at the SSv2 root "
            f"that holds labels.json and the split files."
        ) from None
    except OSError as e:
        raise SSv2Error(f"cannot read {what} {path}: {e}") from e
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise SSv2Error(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}. "
            f"The file is damaged or truncated; restore it from the dataset archive."
        ) from None
    except UnicodeDecodeError as e:
        raise SSv2Error(
            f"{path} is not valid JSON: not UTF-8 text ({e.reason} at byte {e.start}). "
            f"Restore it from the dataset archive."
        ) from None


def load_labels(root: Path | str, layout: SSv2Layout | None = None) -> dict[str, int]:
    """Read the labels file of ``root`` (``ROOT/labels.json`` in the flat layout): class name
    (template without brackets) -> class index.

    Indices must be the integers 0..K-1, each used once (the file stores them as strings).
    """
    path = (layout or find_layout(root)).labels_path
    data = _read_json(path, "labels file")
    if not isinstance(data, dict) or not data:
        raise SSv2Error(
            f"{path}: expected a non-empty JSON object mapping class name to index "
            f'(e.g. {{"Approaching something with your camera": "0"}}), '
            f"got {type(data).__name__}{' (empty)' if not data else ''}"
        )
    labels: dict[str, int] = {}
    by_index: dict[int, str] = {}
    for name, value in data.items():
        # The official file stores indices as strings; accept plain integers too.
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SSv2Error(f"{path}: class {name!r} has index {value!r}; expected an integer")
        try:
            index = int(value)
        except ValueError:
            raise SSv2Error(
                f'{path}: class {name!r} has index {value!r}; expected an integer like "0"'
            ) from None
        if index in by_index:
            raise SSv2Error(
                f"{path}: classes {by_index[index]!r} and {name!r} both have index {index}; "
                f"each class needs its own index"
            )
        by_index[index] = name
        labels[name] = index
    if sorted(by_index) != list(range(len(by_index))):
        gaps = sorted(set(range(len(by_index))) - set(by_index))[:_SHOW_IDS]
        raise SSv2Error(
            f"{path}: class indices must be 0..{len(by_index) - 1} with no gaps; "
            f"missing {gaps}, largest is {max(by_index)}"
        )
    return labels


def _list_videos(directory: Path) -> frozenset[str]:
    """Ids of the ``<id>.webm`` files directly in ``directory`` (empty if it does not exist).

    One directory listing instead of a stat per video: 168K stats cost seconds on a cold network
    or NVMe mount, one listing a fraction of that. map/filter with C callables keep the per-name
    work out of the interpreter loop.
    """
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    webm = filter(methodcaller("endswith", VIDEO_EXT), names)
    return frozenset(map(str.removesuffix, webm, repeat(VIDEO_EXT)))


@dataclass(frozen=True)
class SplitIndex:
    """A loaded split: its entries (missing videos already excluded) and where the videos are.

    ``entries`` keeps the split file's order. ``missing`` lists the ids whose video was not
    found (only non-empty when loaded with ``allow_missing=True``). ``layout`` is where the
    label files were found.
    """

    root: Path
    split: str
    entries: list[SSv2Entry]
    classes: list[str]
    missing: list[str]
    path: Path
    labels_path: Path
    layout: SSv2Layout
    # ids of the .webm files found in each of layout.video_dirs when the split was loaded
    _found: tuple[frozenset[str], ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[SSv2Entry]:
        return iter(self.entries)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        """Video ids in entry order."""
        return [e.id for e in self.entries]

    @property
    def labels(self) -> np.ndarray:
        """Class index per entry as int64, -1 where the entry is unlabeled (test split)."""
        return np.fromiter(
            (-1 if e.label is None else e.label for e in self.entries),
            dtype=np.int64,
            count=len(self.entries),
        )

    @property
    def labeled(self) -> bool:
        """True when every entry has a class (train/validation)."""
        return all(e.label is not None for e in self.entries)

    @property
    def num_in_subdir(self) -> int:
        """How many entries' videos are in a subfolder (the rest are directly in ROOT)."""
        in_root = self._found[0]
        return sum(1 for e in self.entries if e.id not in in_root)

    def videos_by_dir(self) -> dict[str, int]:
        """Entries per video folder, by folder name relative to ROOT (``"."`` for ROOT);
        only folders that hold some of this split's videos."""
        counts = [0] * len(self._found)
        for e in self.entries:
            for k, ids in enumerate(self._found):
                if e.id in ids:
                    counts[k] += 1
                    break
        return {d or ".": n for d, n in zip(VIDEO_DIRS, counts, strict=True) if n}

    def describe(self) -> str:
        """Where this split came from, for the line commands print: ``train: layout SSv2
        download, labels/ (split /r/labels/train.json, labels /r/labels/labels.json);
        videos: 168913 in /r/20bn-something-something-v2``."""
        where = ", ".join(f"{n} in {self.root / d if d != '.' else self.root}"
                          for d, n in self.videos_by_dir().items())
        return (f"{self.split}: layout {self.layout.name} (split {self.path}, labels "
                f"{self.labels_path}); videos: {where or 'none'}")

    def class_counts(self) -> np.ndarray:
        """Entries per class index, int64 ``[num_classes]`` (unlabeled entries not counted)."""
        labels = self.labels
        return np.bincount(labels[labels >= 0], minlength=len(self.classes))

    def video_path(self, video_id: str) -> Path:
        """The file of ``video_id`` in the first of ``layout.video_dirs`` that has it."""
        for directory, ids in zip(self.layout.video_dirs, self._found, strict=True):
            if video_id in ids:
                return directory / f"{video_id}{VIDEO_EXT}"
        raise SSv2Error(
            f"no video for id {video_id!r} in {', '.join(map(str, self.layout.video_dirs))} "
            f"(it is not in {self.path.name}, or its file is missing)"
        )


def _schema_error(path: Path, i: int, problem: str, labeled: bool) -> SSv2Error:
    expected = (
        '{"id": "78687", "label": "...", "template": "Holding [something] ...", '
        '"placeholders": [...]}'
        if labeled
        else '{"id": "1420"}'
    )
    return SSv2Error(f"{path}: entry {i} {problem}; each entry must look like {expected}")


def _parse_entry(
    item: Any, i: int, path: Path, labels: dict[str, int], labels_path: Path, labeled: bool
) -> SSv2Entry:
    """Validate one entry in full, raising an SSv2Error that says what is wrong with it."""
    if not isinstance(item, dict):
        raise _schema_error(path, i, f"is a {type(item).__name__}, not an object", labeled)
    vid = item.get("id")
    if isinstance(vid, int) and not isinstance(vid, bool):
        vid = str(vid)  # some re-exports write ids as numbers
    elif not isinstance(vid, str) or not vid:
        problem = "has no 'id'" if vid is None else f"has id {vid!r}, not a non-empty string"
        raise _schema_error(path, i, problem, labeled)
    template = item.get("template")
    caption = item.get("label")
    if caption is not None and not isinstance(caption, str):
        raise _schema_error(path, i, f"(id {vid}) has a non-string 'label'", labeled)
    if template is None:
        if labeled:
            raise _schema_error(path, i, f"(id {vid}) has no 'template'", labeled)
        return SSv2Entry(vid, None, None, (), caption)
    if not isinstance(template, str):
        raise _schema_error(path, i, f"(id {vid}) has a non-string 'template'", labeled)
    label = labels.get(template_class(template))
    if label is None:
        raise SSv2Error(
            f"{path}: video id {vid} (entry {i}) has template {template!r}, whose class "
            f"{template_class(template)!r} is not in {labels_path}. Use the labels.json that "
            f"ships with this split file."
        )
    ph = item.get("placeholders", ())
    if not isinstance(ph, (list, tuple)) or not all(isinstance(p, str) for p in ph):
        raise _schema_error(
            path, i, f"(id {vid}) has 'placeholders' that is not a list of strings", labeled
        )
    return SSv2Entry(vid, label, template, tuple(ph), caption)


def _parse_entries(
    data: Any, path: Path, labels: dict[str, int], labels_path: Path, labeled: bool
) -> list[SSv2Entry]:
    """Validate the split file's entries and resolve each template to its class index.

    The loop is the bulk of loading a 168K-entry index, so well-formed entries take a fast
    path of exact type checks; anything else goes through :func:`_parse_entry`, which either
    accepts it (e.g. a numeric id, or a test entry without template) or explains the problem.
    """
    if not isinstance(data, list):
        raise SSv2Error(
            f"{path}: expected a JSON list of entries, got {type(data).__name__}; "
            f"is this an SSv2 split file?"
        )
    class_of: dict[str, int] = {}  # template -> index; ~174 distinct templates, so memoise
    entries: list[SSv2Entry] = []
    append = entries.append
    for i, item in enumerate(data):
        try:
            vid = item["id"]
            template = item["template"]
            ph = item["placeholders"]
            caption = item["label"]
            label = class_of[template]
            # join() raises TypeError unless every placeholder is a str: a C-speed check
            "".join(ph)
        except (KeyError, TypeError):
            entry = _parse_entry(item, i, path, labels, labels_path, labeled)
            if entry.template is not None and entry.label is not None:
                class_of[entry.template] = entry.label
            append(entry)
            continue
        if (
            type(vid) is not str
            or not vid
            or type(ph) is not list
            or (caption is not None and type(caption) is not str)
        ):
            append(_parse_entry(item, i, path, labels, labels_path, labeled))
            continue
        append(SSv2Entry(vid, label, template, tuple(ph), caption))

    if len(set(map(attrgetter("id"), entries))) != len(entries):
        first_seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            prev = first_seen.setdefault(e.id, i)
            if prev != i:
                raise SSv2Error(
                    f"{path}: video id {e.id} appears twice, at entries {prev} and {i}. "
                    f"Remove the duplicate (each video must be listed once)."
                )
    return entries


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while parsing: 168K entries allocate ~700K objects,
    none in cycles, and the collector's repeated passes over them cost about a quarter of the
    load time (measured)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_split(root: Path | str, split: str, allow_missing: bool = False) -> SplitIndex:
    """Load the split file of ``split`` with the labels file, in whichever layout ``root``
    has (:func:`find_layout`), and check every video exists.

    Videos are looked for in ``ROOT``, ``ROOT/videos`` and ``ROOT/20bn-something-something-v2``
    (the first that has the file wins). Missing videos raise :class:`SSv2Error` unless
    ``allow_missing``, in which case they are excluded from ``entries``, listed in ``missing``
    and reported with a :class:`SSv2MissingVideosWarning`.
    """
    root = Path(root)
    _check_split(split)
    layout = find_layout(root)
    path = layout.split_path(split)
    labels_path = layout.labels_path
    labels = load_labels(root, layout)
    classes = [""] * len(labels)
    for name, index in labels.items():
        classes[index] = name
    with _gc_paused():
        data = _read_json(path, f"{split} split file")
        entries = _parse_entries(data, path, labels, labels_path, labeled=split != "test")
        del data

    found = tuple(_list_videos(d) for d in layout.video_dirs)
    absent = set(map(attrgetter("id"), entries)).difference(*found)
    missing = [e.id for e in entries if e.id in absent] if absent else []
    if missing:
        where = ", ".join(f"{d}/<id>{VIDEO_EXT}" for d in layout.video_dirs)
        shown = ", ".join(missing[:_SHOW_IDS]) + (", ..." if len(missing) > _SHOW_IDS else "")
        msg = f"{len(missing)} of {len(entries)} videos listed in {path} are missing ({shown})"
        if not allow_missing:
            raise SSv2Error(
                f"{msg}; looked in {where}. Restore the files, point --data at the right root, "
                f"or pass --allow-missing to skip them."
            )
        warnings.warn(f"{msg}; they are excluded.", SSv2MissingVideosWarning, stacklevel=2)
        gone = set(missing)
        entries = [e for e in entries if e.id not in gone]

    return SplitIndex(
        root=root,
        split=split,
        entries=entries,
        classes=classes,
        missing=missing,
        path=path,
        labels_path=labels_path,
        layout=layout,
        _found=found,
    )
