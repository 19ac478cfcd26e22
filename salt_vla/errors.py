"""The one error base: every error a user can cause is a :class:`SaltError`.

The CLI catches ``SaltError`` in one place, prints its message and exits 1; anything else
is a bug and keeps its traceback. Specific classes stay (callers and tests catch them by
name) and usually also derive from the builtin they used to be (``ValueError``,
``RuntimeError``, ...), so code that caught the builtin keeps working.

A message says what is wrong, names the file or value, and says the fix.
"""

from __future__ import annotations

import dataclasses
import math


class SaltError(Exception):
    """Base of every user-facing salt-vla error; its message names the file/value and the fix."""

    def __str__(self) -> str:
        # KeyError quotes its message; a user should read the sentence, not its repr.
        if len(self.args) == 1 and isinstance(self.args[0], str):
            return self.args[0]
        return super().__str__()


class ConfigError(SaltError, ValueError):
    """A configuration value that is unknown or out of range: a preset, a ``--set`` key, a
    view or mask option, an architecture name. The message names the value and the choices."""


def nonfinite_fields(config: object) -> list[str]:
    """``name=value`` of every float field of the dataclass ``config`` that is NaN or
    infinite (floats inside tuple fields too, e.g. ``betas=(0.9, nan)``).

    Range checks cannot catch these themselves: ``lr <= 0`` and ``lr > 1`` are both False for
    NaN, so ``lr=nan`` would pass them and ``grad_clip=nan`` would silently turn clipping off.
    Each config's validation calls this first and names the keys in its ``ConfigError``."""
    out = []
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            out.append(f"{f.name}={value}")
    return out
