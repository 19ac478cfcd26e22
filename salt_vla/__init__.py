"""salt-vla: SALT video encoders (static teacher, asymmetric latent training) for robot policies."""

__version__ = "0.1.0"
