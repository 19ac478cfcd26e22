"""Exported encoders: the trained student as a product a robot-policy codebase loads.

- :mod:`salt_vla.export.format`: the files (directory or single ``.safetensors``), the config
  JSON, reading them back;
- :mod:`salt_vla.export.load`: :func:`load_encoder` -> :class:`VideoEncoder` (frozen
  ``nn.Module``; needs only torch, timm, safetensors and salt_vla);
- :mod:`salt_vla.export.write`: `salt export` (reads a training run, so it needs the training
  stack; import it by its module name, it is not imported here).

See docs/export.md.
"""

from salt_vla.export.format import ExportError, read_export_config
from salt_vla.export.load import VideoEncoder, load_encoder

__all__ = ["ExportError", "VideoEncoder", "load_encoder", "read_export_config"]
