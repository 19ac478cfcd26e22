"""salt-vla: SALT video encoders (static teacher, asymmetric latent training) for robot policies.

``salt_vla.load_encoder(path)`` loads an encoder written by `salt export` (docs/export.md);
it needs only torch, timm and safetensors (`pip install salt-vla`). Training and the `salt`
command need the training stack (`pip install 'salt-vla[train]'`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder", "read_export_config"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import salt_vla` (and the `salt` CLI's start-up) does not import torch.
    if name in ("load_encoder", "read_export_config"):
        import salt_vla.export

        return getattr(salt_vla.export, name)
    raise AttributeError(f"module 'salt_vla' has no attribute {name!r}")
