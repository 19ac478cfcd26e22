"""`--set KEY=VALUE` and config.json values for flat, frozen config dataclasses.

One parser for every training config (stage 1's ``TeacherTrainConfig``, stage 2's
``TrainConfig``): each value is parsed to the key's declared type, an unknown key is refused
with a did-you-mean and the list of valid keys, and every refusal is a ``ConfigError`` that
names the key and the value — a typo silently ignored costs a multi-day run.

The functions take the config class, so they know nothing about either stage; the configs
expose them bound to themselves (``TrainConfig.parse_overrides(items)``, see
``loop_config.py``).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from salt_vla.errors import ConfigError


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def valid_keys(cls: type) -> list[str]:
    """Every key of ``cls`` that `--set` accepts, in declaration order."""
    return [f.name for f in fields(cls)]


def _hints(cls: type) -> dict[str, Any]:
    """Declared type of each field (only fields: class-level tables such as ``CHOICES`` are
    annotated too, but are not keys)."""
    hints = typing.get_type_hints(cls)
    return {k: hints[k] for k in valid_keys(cls)}


def unknown_key_message(key: str, cls: type) -> str:
    keys = valid_keys(cls)
    return f"unknown config key {key!r}{did_you_mean(key, keys)}; valid keys: {', '.join(keys)}"


def aliases(cls: type) -> dict[str, str]:
    """Old key name -> key, for the keys ``cls`` renamed (its ``ALIASES`` table)."""
    return dict(getattr(cls, "ALIASES", {}))


def canonical_key(key: str, cls: type) -> str:
    """``key``, or the key an old name of it now stands for."""
    return aliases(cls).get(key, key)


def deprecation_notes(keys: Iterable[str], cls: type, how: str = "--set {key}=...") -> list[str]:
    """One line per old key name among ``keys``: what to write instead (``how`` formats a
    spelling of a key, e.g. ``--set {key}=...`` or ``{key} = ...`` in a config file)."""
    table = aliases(cls)
    return [f"{how.format(key=k)} is deprecated: it is now {how.format(key=table[k])}"
            for k in dict.fromkeys(keys) if k in table]


def values_from_dict(cls: type, d: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Type-checked constructor arguments of ``cls`` from a JSON/TOML/YAML dict (config.json,
    a checkpoint's config, a config file; old key names are mapped): unknown keys and wrong
    types raise ``ConfigError`` (prefixed with ``where``, the file, when given)."""
    hints = _hints(cls)
    prefix = f"{where}: " if where else ""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = canonical_key(k, cls)
        if isinstance(v, dict):
            raise ConfigError(f"{prefix}{k!r} is a table; salt configs are flat: one `key = "
                              "value` per line at the top level")
        if name not in hints:
            raise ConfigError(prefix + unknown_key_message(k, cls))
        try:
            out[name] = _coerce_json(name, v, hints[name])
        except ConfigError as e:
            raise ConfigError(prefix + str(e)) from None
    return out


def parse_value(key: str, text: str, cls: type) -> Any:
    """Parse the text of `--set key=text` to the key's declared type in ``cls``.

    ``X | None`` keys take ``none``/``null``/empty for None; tuple keys take comma-separated
    values (brackets ignored), e.g. ``betas=0.9,0.99``.
    """
    hints = _hints(cls)
    key = canonical_key(key, cls)
    if key not in hints:
        raise ConfigError(unknown_key_message(key, cls))
    tp = hints[key]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _parse_scalar(key, text, args[0])
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        if len(parts) != len(args):
            raise ConfigError(
                f"{key}={text!r}: expected {len(args)} comma-separated values, e.g. "
                f"{key}=" + ",".join(str(v) for v in _default(cls, key))
            )
        return tuple(_parse_scalar(key, p.strip(), a) for p, a in zip(parts, args, strict=True))
    return _parse_scalar(key, text, tp)


def parse_overrides(items: Iterable[str], cls: type) -> dict[str, Any]:
    """``["lr=3e-4", "betas=0.9,0.99"]`` -> typed ``{"lr": 3e-4, "betas": (0.9, 0.99)}``
    for the keys of ``cls`` (a later item for the same key wins; an old key name sets the
    key it was renamed to)."""
    out: dict[str, Any] = {}
    set_keys(items)  # every item is key=value before any is parsed
    for item in items:
        key, _, text = item.partition("=")
        key = key.strip()
        out[canonical_key(key, cls)] = parse_value(key, text, cls)
    return out


def set_keys(items: Iterable[str]) -> list[str]:
    """The keys `--set` items name, as typed (a malformed item raises ``ConfigError``)."""
    keys = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=3e-4")
        keys.append(key.strip())
    return keys


def type_name(cls: type, key: str) -> str:
    """How `salt exp show --keys` names a key's type: ``int``, ``float``, ``bool``,
    ``string``, ``int or unset``, ``2 floats``."""
    tp = _hints(cls)[key]
    optional = ""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        optional = " or unset"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"{len(args)} {_word(args[0])}s{optional}"
    return _word(tp) + optional


def _word(tp: Any) -> str:
    return "string" if tp is str else _type_name(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_scalar(key: str, text: str, tp: type) -> Any:
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an int") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a float") from None
    if tp is str:
        return text
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _coerce_json(key: str, value: Any, tp: Any) -> Any:
    """Check a value read from JSON against the key's type (ints may stand for floats,
    lists for tuples: JSON has neither floats without a dot nor tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} values")
        return tuple(_coerce_json(key, v, a) for v, a in zip(value, args, strict=True))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    return value


def _default(cls: type, key: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == key)
