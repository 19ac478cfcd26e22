"""Config files: a run's keys as TOML (or YAML), read by ``--config`` and written by ``show``.

``salt train --config FILE`` takes a flat file of ``key = value`` lines: the keys of the
stage's config class (``TrainConfig``, ``TeacherTrainConfig``), typed as TOML types (tuples are
arrays; a key left out keeps the preset's value). ``salt exp show NAME`` writes exactly such a
file, each key with its one-line description (:func:`~salt_vla.trainer.loop_config.key_help`)
as a comment, so ``salt exp show exp3 > my.toml``, an edit, and ``salt train --config my.toml``
reproduce the preset but for the edit.

TOML needs Python >= 3.11 (``tomllib``) or the ``tomli`` package; YAML (``.yaml``/``.yml``)
needs PyYAML. ``salt sweep`` reads its spec files through :func:`parse_config_text` too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from salt_vla.errors import ConfigError
from salt_vla.trainer import overrides
from salt_vla.trainer.loop_config import LoopConfig, key_help

YAML_SUFFIXES = (".yaml", ".yml")
UNSET = "<unset>"  # how a None value is shown (TOML has no null): in a comment line


def parse_config_text(text: str, where: str) -> dict[str, Any]:
    """The top-level table of a TOML text (YAML when ``where`` ends in .yaml/.yml);
    ``ConfigError`` naming ``where`` when it does not parse or a parser is missing."""
    if where.endswith(YAML_SUFFIXES):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{where}: YAML files need PyYAML (pip install pyyaml); or "
                              "write it as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ConfigError(f"{where}: reading TOML needs Python >= 3.11 or `pip "
                                  "install tomli`") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: not valid TOML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table/mapping at the top level")
    return data


def read_config_file(
    path: Path | str, cls: type[LoopConfig]
) -> tuple[dict[str, Any], list[str]]:
    """``(values, notes)``: the typed values a config file sets for ``cls``'s keys (keys it
    leaves out are not in the dict) and one deprecation line per old key name it uses (whose
    value is taken for the new key). Unknown keys, tables and wrong types raise
    ``ConfigError`` naming the file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    data = parse_config_text(text, path.name)
    notes = [f"{path}: {n}" for n in overrides.deprecation_notes(data, cls, "`{key} = ...`")]
    return overrides.values_from_dict(cls, data, str(path)), notes


# --- writing ---------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A config value as a TOML value (strings quoted, tuples as arrays, floats kept
    floats); ``None`` has no TOML form and is refused here (see :func:`config_toml`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")  # pragma: no cover - keys are scalars


def config_toml(cfg: LoopConfig, header: list[str] | tuple[str, ...] = ()) -> str:
    """Every key of ``cfg`` as TOML that ``--config`` reads back to an equal config, each
    with its description as a comment; an unset (None) key is a commented-out line."""
    names = [f.name for f in dataclasses.fields(cfg)]
    width = max(len(n) for n in names)
    values = {n: getattr(cfg, n) for n in names}
    shown = {n: UNSET if v is None else toml_value(v) for n, v in values.items()}
    vwidth = min(max(len(s) for s in shown.values()), 24)
    lines = [f"# {h}" if h else "#" for h in header]
    if any(v is None for v in values.values()):
        lines.append(f"# `# key = {UNSET}` lines are unset (TOML has no null): uncomment one and "
                     "give a value to set it.")
    for n in names:
        text = f"{n.ljust(width)} = {shown[n].ljust(vwidth)}"
        desc = key_help(type(cfg), n)
        line = f"{text}  # {desc}" if desc else text.rstrip()
        lines.append(f"# {line}" if values[n] is None else line)
    return "\n".join(lines) + "\n"


def key_table(cfg: LoopConfig) -> list[str]:
    """``key  type  default  description`` lines for every key (defaults: ``cfg``'s values)."""
    cls = type(cfg)
    rows = [(f.name, overrides.type_name(cls, f.name),
             UNSET if getattr(cfg, f.name) is None else toml_value(getattr(cfg, f.name)),
             key_help(cls, f.name)) for f in dataclasses.fields(cfg)]
    rows.insert(0, ("key", "type", "default", "description"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    widths[2] = min(widths[2], 24)
    return [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].ljust(widths[2])}  "
            f"{r[3]}".rstrip() for r in rows]
