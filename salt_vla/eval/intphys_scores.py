"""Scoring intuitive-physics surprise (pure functions of surprise values; no model, no files).

Inputs are what the result record stores (docs/intphys.md), so any record can be rescored
later (:func:`score_record`) and other scorings computed from the same per-video series:

* ``errors[video][C]``: the errors ``e[w, k]`` of one video at context ``C``, ``[windows,
  t - C]`` (:mod:`salt_vla.eval.intphys` defines them);
* pairs ``{"possible": id, "impossible": id, "tags": {...}}`` and quadruplets
  ``{"possible": [id, id], "impossible": [id, id], "tags": {...}}``.

Scores, for each context ``C`` and each surprise variant (``mean``: the average of all
``e[w, k]``; ``max``: the largest, i.e. max over time):

* **pairwise relative accuracy**: the fraction of pairs whose impossible video is strictly
  more surprising than its possible twin (V-JEPA's and IntPhys 2's relative protocol);
* **quadruplet accuracy**: the fraction of scenes whose two impossible videos' summed
  surprise strictly exceeds the two possible ones' (the original IntPhys protocol: it asks
  nothing of how the four videos pair up).

Ties count as wrong and are counted. Both come overall and per group value (``condition``,
``Difficulty``, ``Camera`` for IntPhys 2; ``kind`` for the synthetic pairs). One context is
the reported one, fixed before scoring (:func:`reported_context`); picking the best context
per property after looking at the scores, as V-JEPA's analysis notebook does, is optimistic
and only ever shown separately and labelled so (:func:`best_contexts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from salt_vla.errors import SaltError

VARIANTS = ("mean", "max")
OPTIMISTIC_NOTE = ("best context per group, picked on these same scores (as V-JEPA's analysis "
                   "notebook does): optimistic, not an estimate of accuracy on new data")


class IntPhysScoreError(SaltError, ValueError):
    """Scores that cannot be computed from the given series; the message says why."""


def surprise_scores(errors: np.ndarray) -> dict[str, float]:
    """``{"mean", "max"}`` surprise of one video from its ``e[w, k]`` errors (any shape)."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        raise IntPhysScoreError("no prediction errors to score (no window predicted any step)")
    return {"mean": float(e.mean()), "max": float(e.max())}


def pair_accuracy(possible: Sequence[float], impossible: Sequence[float]) -> dict[str, Any]:
    """Relative accuracy: the fraction of pairs whose impossible video is strictly more
    surprising; ties count as wrong and are counted. ``accuracy`` is None for no pairs."""
    p = np.asarray(possible, dtype=np.float64)
    q = np.asarray(impossible, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise IntPhysScoreError(f"need two equal-length 1-D score lists, got {p.shape} and "
                                f"{q.shape}")
    n = len(p)
    correct = int((q > p).sum())
    return {"accuracy": correct / n if n else None, "correct": correct,
            "ties": int((q == p).sum()), "pairs": n}


def quadruplet_accuracy(possible: np.ndarray, impossible: np.ndarray) -> dict[str, Any]:
    """``possible``, ``impossible``: ``[scenes, 2]`` surprises. A scene is correct when the
    impossible videos' sum is strictly larger; ties count as wrong and are counted."""
    p = np.asarray(possible, dtype=np.float64)
    q = np.asarray(impossible, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2 or p.shape[1] != 2:
        raise IntPhysScoreError(f"need two [scenes, 2] arrays, got {p.shape} and {q.shape}")
    res = pair_accuracy(p.sum(1), q.sum(1))
    res["quadruplets"] = res.pop("pairs")
    return res


def reported_context(contexts: Sequence[int], requested: int | None = None) -> tuple[int, str]:
    """The context whose scores are the headline, and the rule that chose it. Fixed before
    any score is seen: ``requested`` (``--report-context``) or the middle of ``contexts``."""
    ordered = sorted(int(c) for c in contexts)
    if requested is not None:
        if requested not in ordered:
            raise IntPhysScoreError(f"--report-context {requested} is not among the contexts "
                                    f"scored ({', '.join(map(str, ordered))}); add it to "
                                    "--context")
        return requested, "--report-context"
    return ordered[(len(ordered) - 1) // 2], "default: the middle of the contexts scored"


def score_contexts(
    surprise: Mapping[str, Mapping[str, Mapping[str, float]]],
    pairs: Sequence[Mapping[str, Any]],
    quadruplets: Sequence[Mapping[str, Any]],
    contexts: Sequence[int],
    groups: Sequence[str],
) -> dict[str, Any]:
    """Scores per context (``surprise[video][str(C)][variant]``, see the module doc)::

        {C: {"pairwise": {variant: acc}, "quadruplet": {variant: acc} | None,
             "by": {group: {value: {"pairwise": ..., "quadruplet": ...}}}}}
    """
    out: dict[str, Any] = {}
    for c in contexts:
        key = str(c)
        entry = _score_subset(surprise, pairs, quadruplets, key)
        entry["by"] = {}
        for g in groups:
            values = sorted({p["tags"].get(g, "") for p in pairs})
            entry["by"][g] = {
                v: _score_subset(surprise, [p for p in pairs if p["tags"].get(g, "") == v],
                                 [q for q in quadruplets if q["tags"].get(g, "") == v], key)
                for v in values
            }
        out[key] = entry
    return out


def _score_subset(surprise: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]],
                  quads: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    def s(video: str, variant: str) -> float:
        try:
            return surprise[video][key][variant]
        except KeyError:
            raise IntPhysScoreError(f"no {variant} surprise at context {key} for video "
                                    f"{video!r}") from None

    res: dict[str, Any] = {"pairwise": {
        v: pair_accuracy([s(p["possible"], v) for p in pairs],
                         [s(p["impossible"], v) for p in pairs]) for v in VARIANTS}}
    res["quadruplet"] = {
        v: quadruplet_accuracy(np.array([[s(i, v) for i in q["possible"]] for q in quads]),
                               np.array([[s(i, v) for i in q["impossible"]] for q in quads]))
        for v in VARIANTS} if quads else None
    return res


def best_contexts(scores: Mapping[str, Any], groups: Sequence[str]) -> dict[str, Any]:
    """For each score, variant and group value: the context with the highest accuracy (first
    one on a tie). Optimistic by construction (:data:`OPTIMISTIC_NOTE`)."""
    out: dict[str, Any] = {"note": OPTIMISTIC_NOTE}
    for score in ("pairwise", "quadruplet"):
        rows: dict[str, Any] = {}
        for label, pick in _rows(scores, groups):
            cells = {}
            for v in VARIANTS:
                cands = [(c, pick(s)[score]) for c, s in scores.items()]
                cands = [(c, r[v]["accuracy"]) for c, r in cands if r is not None]
                if cands:
                    c, a = max(cands, key=lambda x: x[1])
                    cells[v] = {"context": int(c), "accuracy": a}
            if cells:
                rows[label] = cells
        if rows:
            out[score] = rows
    return out


def _rows(scores: Mapping[str, Any], groups: Sequence[str]) -> list[tuple[str, Any]]:
    """``(label, picker)`` for "all" and each ``group=value`` present in ``scores``."""
    first = next(iter(scores.values()))
    rows: list[tuple[str, Any]] = [("all", lambda s: s)]
    for g in groups:
        for value in first["by"].get(g, {}):
            rows.append((f"{g}={value}", lambda s, g=g, value=value: s["by"][g][value]))
    return rows


def score_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Recompute a result record's ``scores`` from its per-video error series."""
    contexts = record["config"]["contexts"]
    surprise = {v["id"]: {c: surprise_scores(np.asarray(s["errors"]))
                          for c, s in v["surprise"].items()} for v in record["videos"]}
    return score_contexts(surprise, record["pairs"], record["quadruplets"], contexts,
                          record["data"]["groups"])


def format_scores(scores: Mapping[str, Any], groups: Sequence[str], reported: int,
                  rule: str) -> list[str]:
    """Tables for the terminal: one row per group value, one column per context (the
    reported one starred), each cell ``mean / max`` accuracy in %."""
    ctxs = list(scores)
    first = scores[ctxs[0]]
    lines = [f"reported context: C={reported} ({rule}; every context is below and in the "
             "result record, the best context per group is not picked)"]
    for score, what in (("pairwise", "pairs whose impossible video is more surprising"),
                        ("quadruplet", "scenes whose two impossible videos' summed surprise "
                                       "exceeds the two possible ones'")):
        if first[score] is None:
            lines.append(f"{score} accuracy: not applicable (this layout has no quadruplets)")
            continue
        n = first[score]["mean"]["pairs" if score == "pairwise" else "quadruplets"]
        lines.append(f"{score} accuracy, % of {n} {what} (mean / max surprise):")
        head = "".join(f"{f'C={c}' + ('*' if int(c) == reported else ''):>13}" for c in ctxs)
        lines.append(f"  {'':<26}{head}")
        for label, pick in _rows(scores, groups):
            cells = "".join(f"{_cell(pick(scores[c])[score]):>13}" for c in ctxs)
            lines.append(f"  {label:<26}{cells}")
    head = scores[str(reported)]
    parts = [f"{score} {_cell(head[score]).replace(' ', '')} %" for score in
             ("pairwise", "quadruplet") if head[score] is not None]
    lines.append(f"headline (C={reported}, mean/max surprise): {', '.join(parts)}")
    return lines


def _cell(res: Mapping[str, Any] | None) -> str:
    if res is None:
        return "-"
    a, b = (res[v]["accuracy"] for v in VARIANTS)
    return "-" if a is None else f"{100 * a:3.0f} / {100 * b:3.0f}"
