"""What `salt eval intphys` scores: videos, matched pairs and quadruplets, read from either
layout on disk (docs/intphys.md).

* ``pairs``: ``ROOT/pairs.json`` (:mod:`salt_vla.eval.intphys_synth` writes it): a list of
  matched possible/impossible pairs, grouped by ``kind``. No quadruplets.
* ``intphys2``: IntPhys 2 as released: ``ROOT/<split>/metadata.csv`` with the header
  ``SceneIndex,name,file_name,game_name,condition,env,type,occluder,Difficulty,Camera`` and
  the videos it names under ``ROOT/<split>/`` (``Videos/<name>.mp4``). Every scene
  (``SceneIndex``) has four rows whose ``type`` is ``1_Possible``, ``1_Impossible``,
  ``2_Possible`` and ``2_Impossible``, in any order. Grouped by ``condition``, ``Difficulty``
  and ``Camera``.

**Pairing rule (intphys2).** ``N_Possible`` is matched with ``N_Impossible`` of the same
scene, giving two pairs per scene; the four videos form one quadruplet. Why: all four rows of
a scene share every column but ``type`` (game, condition, environment, occluder, difficulty,
camera); ``type`` splits into a number and an outcome. IntPhys 2 follows IntPhys's
violation-of-expectation design, in which a scene is filmed in two set-ups, each with a
possible and an impossible outcome, so the number names the set-up and the two videos that
share it differ only in whether the physics is violated: the minimal pair a relative
(pairwise) score needs. Pairing across set-ups (``1_Possible`` with ``2_Impossible``) would
compare videos that also differ in set-up. The quadruplet score (sum of the two possible
videos' surprises against the two impossible ones', IntPhys's original protocol) does not
depend on this rule at all, which is one reason it is reported alongside.

**Nothing is dropped silently.** A scene with missing or extra rows, an unknown ``type``,
rows that disagree on ``condition``/``Difficulty``/``Camera``, or a video file that is not
on disk is not scored and is listed (:class:`Problem`) in the output and the result record.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from salt_vla.errors import SaltError

FORMATS = ("auto", "intphys2", "pairs")
PAIRS_FILE = "pairs.json"
METADATA_FILE = "metadata.csv"
HEADER = ("SceneIndex", "name", "file_name", "game_name", "condition", "env", "type",
          "occluder", "Difficulty", "Camera")
TYPES = ("1_Possible", "1_Impossible", "2_Possible", "2_Impossible")
SETUPS = ("1", "2")
VALUES = {  # the value sets of the released metadata (the groups scores are reported by)
    "condition": ("solidity", "permanence", "immutability", "continuity"),
    "Difficulty": ("Easy", "Medium", "Hard"),
    "Camera": ("Fixed", "Moving"),
}
GROUPS = {"intphys2": tuple(VALUES), "pairs": ("kind",)}
_REQUIRED = ("SceneIndex", "name", "type", *VALUES)


class IntPhysDataError(SaltError, ValueError):
    """A benchmark directory or metadata file that cannot be read; the message says the fix."""


@dataclass(frozen=True)
class Video:
    """One video to score. ``id`` is unique within a benchmark."""

    id: str
    path: Path
    scene: str
    outcome: str  # "possible" | "impossible"
    type: str  # intphys2: "1_Possible", ...; pairs: "possible" | "impossible"
    tags: dict[str, str]  # the groups' values (condition, Difficulty, Camera | kind)


@dataclass(frozen=True)
class Pair:
    id: str
    scene: str
    possible: str  # video id
    impossible: str
    tags: dict[str, str]


@dataclass(frozen=True)
class Quadruplet:
    scene: str
    possible: tuple[str, str]
    impossible: tuple[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class Problem:
    """A scene (or pair) that is not scored, and why."""

    scene: str
    reason: str


@dataclass(frozen=True)
class SceneFilter:
    """Keep only scenes whose values are among these (empty: any). Values are canonical."""

    condition: tuple[str, ...] = ()
    Difficulty: tuple[str, ...] = ()  # noqa: N815 - the CSV column's spelling
    Camera: tuple[str, ...] = ()  # noqa: N815

    @classmethod
    def parse(cls, condition: str | None = None, difficulty: str | None = None,
              camera: str | None = None) -> SceneFilter:
        """From comma-separated option values, matched case-insensitively to :data:`VALUES`."""
        out = {}
        for column, text, option in (("condition", condition, "--condition"),
                                     ("Difficulty", difficulty, "--difficulty"),
                                     ("Camera", camera, "--camera")):
            known = {v.lower(): v for v in VALUES[column]}
            chosen = []
            for item in (text or "").split(","):
                if not item.strip():
                    continue
                value = known.get(item.strip().lower())
                if value is None:
                    raise IntPhysDataError(f"{option} {item.strip()!r}: choose from "
                                           f"{', '.join(VALUES[column])} (comma-separated)")
                chosen.append(value)
            out[column] = tuple(dict.fromkeys(chosen))
        return cls(**out)

    def active(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in (("condition", self.condition),
                                        ("Difficulty", self.Difficulty),
                                        ("Camera", self.Camera)) if v}

    def keeps(self, tags: dict[str, str]) -> bool:
        return all(tags.get(k) in v for k, v in self.active().items())


@dataclass(frozen=True)
class Benchmark:
    """Videos with their pairs and quadruplets, ready to score."""

    format: str  # "intphys2" | "pairs"
    root: Path
    source: Path  # the metadata file read
    split: str | None
    groups: tuple[str, ...]
    videos: tuple[Video, ...]
    pairs: tuple[Pair, ...]
    quadruplets: tuple[Quadruplet, ...]
    problems: tuple[Problem, ...] = ()
    filters: dict[str, list[str]] = field(default_factory=dict)
    filtered_out: int = 0  # complete scenes the filters left out

    @property
    def scenes(self) -> list[str]:
        return list(dict.fromkeys(v.scene for v in self.videos))

    def first_scenes(self, n: int) -> Benchmark:
        """The first ``n`` scenes (pairs layout: pairs); ``n <= 0``: all."""
        if n <= 0:
            return self
        keep = set(self.scenes[:n])
        return replace(self, videos=tuple(v for v in self.videos if v.scene in keep),
                       pairs=tuple(p for p in self.pairs if p.scene in keep),
                       quadruplets=tuple(q for q in self.quadruplets if q.scene in keep))

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "format": self.format, "source": str(self.source),
                "split": self.split, "filters": self.filters, "scenes": len(self.scenes),
                "videos": len(self.videos), "pairs": len(self.pairs),
                "quadruplets": len(self.quadruplets), "filtered_out": self.filtered_out,
                "not_scored": [{"scene": p.scene, "reason": p.reason} for p in self.problems]}


# --- reading ---------------------------------------------------------------------------------


def detect_format(root: Path, split: str) -> str:
    """``pairs`` when ``ROOT/pairs.json`` exists, ``intphys2`` when ``ROOT/<split>/metadata.csv``
    does; anything else is an error that says what was looked for."""
    has_pairs = (root / PAIRS_FILE).is_file()
    has_csv = (root / split / METADATA_FILE).is_file()
    if has_pairs and has_csv:
        raise IntPhysDataError(f"{root} has both {PAIRS_FILE} and {split}/{METADATA_FILE}; "
                               "choose one with --format pairs|intphys2")
    if has_pairs:
        return "pairs"
    if has_csv:
        return "intphys2"
    hint = ""
    if (root / METADATA_FILE).is_file():
        hint = (f" {root / METADATA_FILE} exists: {root} looks like a split directory; pass "
                f"--data {root.parent} --split {root.name}")
    raise IntPhysDataError(
        f"{root} has neither {PAIRS_FILE} (the synthetic layout: `salt data synth --intphys "
        f"{root}`) nor {split}/{METADATA_FILE} (IntPhys 2 as downloaded: --data is the folder "
        f"holding Main/ and Debug/; --split picks one).{hint}"
    )


def load_benchmark(root: Path | str, format: str = "auto", split: str = "Main",
                   filters: SceneFilter | None = None) -> Benchmark:
    """Read ``root`` in ``format`` (``auto``: :func:`detect_format`)."""
    root = Path(root).expanduser()
    if format not in FORMATS:
        raise IntPhysDataError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "auto":
        format = detect_format(root, split)
    if format == "pairs":
        if filters and filters.active():
            raise IntPhysDataError("--condition/--difficulty/--camera select IntPhys 2 scenes; "
                                   f"{root / PAIRS_FILE} has none (use --format intphys2)")
        return load_pairs_layout(root)
    return load_intphys2(root, split, filters or SceneFilter())


def load_pairs_layout(root: Path) -> Benchmark:
    """``ROOT/pairs.json`` (layout: :mod:`salt_vla.eval.intphys_synth`, docs/intphys.md)."""
    path = root / PAIRS_FILE
    if not path.is_file():
        raise IntPhysDataError(
            f"no {PAIRS_FILE} in {root}: make a synthetic set with `salt data synth --intphys "
            f"{root}`, or point --data at an IntPhys 2 download (--format intphys2)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IntPhysDataError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise IntPhysDataError(f"{path}: expected an object with a 'pairs' list")
    if data.get("complete") is False:
        raise IntPhysDataError(f"{path} is marked incomplete; re-run the generator")
    videos, pairs = [], []
    for i, p in enumerate(data["pairs"]):
        try:
            pid, kind = str(p["id"]), str(p.get("kind", ""))
            files = {o: root / p[o] for o in ("possible", "impossible")}
        except (KeyError, TypeError):
            raise IntPhysDataError(f"{path}: pair {i} needs 'id', 'possible' and 'impossible' "
                                   f"(paths relative to {root}); got {p!r}") from None
        for f in files.values():
            if not f.is_file():
                raise IntPhysDataError(f"{path}: pair {pid} lists {f}, which does not exist")
        tags = {"kind": kind}
        for outcome, f in files.items():
            videos.append(Video(f"{pid}/{outcome}", f, pid, outcome, outcome, tags))
        pairs.append(Pair(pid, pid, f"{pid}/possible", f"{pid}/impossible", tags))
    if not pairs:
        raise IntPhysDataError(f"{path} lists no pairs")
    return Benchmark("pairs", root, path, None, GROUPS["pairs"], tuple(videos), tuple(pairs),
                     ())


def read_metadata(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of an IntPhys 2 ``metadata.csv`` (blank lines skipped); the
    header must name :data:`_REQUIRED`."""
    if not path.is_file():
        raise IntPhysDataError(
            f"no {path}: --data is the IntPhys 2 folder holding Main/ and Debug/ (each with "
            f"{METADATA_FILE} and Videos/), --split picks one")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IntPhysDataError(f"cannot read {path}: {e}") from e
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        labels = "" if "type" in header else (
            " (the held-out split is released without labels: score it through the "
            "IntPhys 2 leaderboard, not here)")
        raise IntPhysDataError(
            f"{path}: the header lacks {', '.join(missing)}{labels}; expected the released "
            f"header {','.join(HEADER)}, got {','.join(header) or '(empty file)'}")
    return rows


def load_intphys2(root: Path, split: str = "Main",
                  filters: SceneFilter | None = None) -> Benchmark:
    """Scenes of ``ROOT/<split>/metadata.csv`` (module doc: pairing rule, problems)."""
    filters = filters or SceneFilter()
    split_dir = root / split
    source = split_dir / METADATA_FILE
    rows = read_metadata(source)
    scenes: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    problems: list[Problem] = []
    for line, row in rows:
        if None in row or any(v is None for v in row.values()):
            problems.append(Problem(str(row.get("SceneIndex") or f"line {line}"),
                                    f"{source} line {line} has the wrong number of fields"))
            continue
        scenes[row["SceneIndex"].strip()].append((line, row))
    videos: list[Video] = []
    pairs: list[Pair] = []
    quads: list[Quadruplet] = []
    filtered_out = 0
    seen: dict[str, str] = {}  # video name -> scene
    bad_rows = {p.scene for p in problems}
    for scene, scene_rows in scenes.items():
        if scene in bad_rows:
            continue
        problem, tags = _check_scene(scene_rows, split_dir)
        if problem is None and not filters.keeps(tags):
            filtered_out += 1
            continue
        if problem is not None:
            if tags is None or filters.keeps(tags):
                problems.append(Problem(scene, problem))
            continue
        by_type = {row["type"].strip(): row for _, row in scene_rows}
        clash = [f"{n} (also in scene {seen[n]})" for n in
                 (r["name"].strip() for r in by_type.values()) if n in seen]
        if clash:
            problems.append(Problem(scene, f"video name{'s' if len(clash) > 1 else ''} "
                                           f"{', '.join(clash)}: names must be unique"))
            continue
        seen.update({r["name"].strip(): scene for r in by_type.values()})
        ids = {}
        for type_ in TYPES:
            row = by_type[type_]
            vid = row["name"].strip()
            ids[type_] = vid
            videos.append(Video(vid, _video_path(split_dir, row), scene,
                                type_.split("_")[1].lower(), type_, tags))
        for n in SETUPS:
            pairs.append(Pair(f"{scene}/{n}", scene, ids[f"{n}_Possible"],
                              ids[f"{n}_Impossible"], tags))
        quads.append(Quadruplet(scene, (ids["1_Possible"], ids["2_Possible"]),
                                (ids["1_Impossible"], ids["2_Impossible"]), tags))
    if not quads:
        detail = "; ".join(f"scene {p.scene}: {p.reason}" for p in problems[:5])
        raise IntPhysDataError(
            f"{source}: no complete scene to score ({len(scenes)} scenes, {filtered_out} left "
            f"out by the filters {filters.active() or '(none)'}, {len(problems)} incomplete"
            f"{': ' + detail if detail else ''})")
    return Benchmark("intphys2", root, source, split, GROUPS["intphys2"], tuple(videos),
                     tuple(pairs), tuple(quads), tuple(problems), filters.active(),
                     filtered_out)


def _video_path(split_dir: Path, row: dict[str, str]) -> Path:
    name = (row.get("file_name") or "").strip() or f"Videos/{row['name'].strip()}.mp4"
    return split_dir / name


def _check_scene(rows: Sequence[tuple[int, dict[str, str]]],
                 split_dir: Path) -> tuple[str | None, dict[str, str] | None]:
    """``(problem or None, the scene's group values or None when its rows disagree)``."""
    tags: dict[str, str] | None = {}
    disagree = []
    for column in VALUES:
        values = sorted({row[column].strip() for _, row in rows})
        if len(values) == 1:
            tags[column] = values[0]
        else:
            disagree.append(f"{column} {'/'.join(values)}")
    if disagree:
        tags = None
    lines = ", ".join(str(line) for line, _ in rows)
    types = [row["type"].strip() for _, row in rows]
    counts = {t: types.count(t) for t in dict.fromkeys(types)}
    reasons = []
    if sorted(types) != sorted(TYPES):
        missing = [t for t in TYPES if t not in counts]
        unknown = [t for t in counts if t not in TYPES]
        twice = [f"{t} x{c}" for t, c in counts.items() if c > 1 and t in TYPES]
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"repeated {', '.join(twice)}"] if twice else []) + (
            [f"unknown type {', '.join(map(repr, unknown))}"] if unknown else [])
        reasons.append(f"{len(rows)} rows (lines {lines}): {'; '.join(parts)}")
    if disagree:
        reasons.append(f"rows disagree on {', '.join(disagree)}")
    if not reasons:
        absent = [str(_video_path(split_dir, row)) for _, row in rows
                  if not _video_path(split_dir, row).is_file()]
        if absent:
            reasons.append(f"video{'s' if len(absent) > 1 else ''} not on disk: "
                           f"{', '.join(absent)}")
    return ("; ".join(reasons) or None), tags
