"""salt-vla: SALT video encoders (static teacher, asymmetric latent training) for robot policies."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import salt_vla` (and the `salt` CLI's start-up) does not import torch.
    if name == "load_encoder":
        from salt_vla.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'salt_vla' has no attribute {name!r}")
