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


def values_from_dict(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Type-checked constructor arguments of ``cls`` from a JSON dict (config.json, a
    checkpoint's config): unknown keys and wrong types raise ``ConfigError``."""
    hints = _hints(cls)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(hints)}")
    return {k: _coerce_json(k, v, hints[k]) for k, v in d.items()}


def parse_value(key: str, text: str, cls: type) -> Any:
    """Parse the text of `--set key=text` to the key's declared type in ``cls``.

    ``X | None`` keys take ``none``/``null``/empty for None; tuple keys take comma-separated
    values (brackets ignored), e.g. ``betas=0.9,0.99``.
    """
    hints = _hints(cls)
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
    for the keys of ``cls`` (a later item for the same key wins)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=3e-4")
        out[key] = parse_value(key, text, cls)
    return out


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
