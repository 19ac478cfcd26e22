"""Shared pytest fixtures: small data made by the tests themselves, once per session."""

from __future__ import annotations

import os

# Two cores shared with the decoder processes: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
