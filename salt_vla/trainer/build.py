"""From an experiment config to the objects it names: view, student, predictor, masks.

One place maps the flat config keys onto the model and mask configs, so the trainer,
benchmarks and evaluation build identical networks from the same experiment. The view, grid
and mask helpers read only the loop's keys (:class:`LoopConfig`), so stage 1 uses them too;
the student and predictor come from stage 2's :class:`TrainConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from salt_vla.errors import ConfigError
from salt_vla.masking.config import VJEPA_GROUPS, MaskConfig
from salt_vla.models.grid import TokenGrid, token_grid
from salt_vla.models.predictor import Predictor, PredictorConfig
from salt_vla.models.student import Student, StudentConfig
from salt_vla.trainer.experiments import TrainConfig
from salt_vla.trainer.loop_config import LoopConfig
from salt_vla.trainer.objective import SaltModel

STORE_VIEW = "store"


def view_spec(cfg: LoopConfig, store_view: dict[str, Any] | None = None) -> Any:
    """The ViewSpec the config names: a preset, or with ``view="store"`` the store's own spec
    (``store_view`` = cache.json's ``view`` entry), for caches built with custom view flags."""
    from salt_vla.data.view import VIEW_PRESETS, ViewSpec

    if cfg.view == STORE_VIEW:
        if store_view is None:
            raise ConfigError("view='store' takes the view from the cache, so it needs cached "
                              "targets; name a view preset for online targets")
        return ViewSpec.from_dict(store_view["spec"])
    if cfg.view not in VIEW_PRESETS:
        raise ConfigError(
            f"view={cfg.view!r} is not a view preset; choose one of {', '.join(VIEW_PRESETS)} "
            f"(or '{STORE_VIEW}': the cache's own view)"
        )
    return VIEW_PRESETS[cfg.view]


def spec_grid(cfg: LoopConfig, spec: Any) -> TokenGrid:
    """Token grid of ``spec``'s clips with the config's tubelet/patch sizes."""
    try:
        return token_grid(spec.num_frames, spec.size, cfg.tubelet, cfg.patch)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def config_grid(cfg: LoopConfig) -> TokenGrid:
    """The token grid of the config's view preset."""
    return spec_grid(cfg, view_spec(cfg))


def student_config(cfg: TrainConfig, num_frames: int, img_size: int) -> StudentConfig:
    return StudentConfig(
        size=cfg.student,
        num_frames=num_frames,
        img_size=img_size,
        tubelet=cfg.tubelet,
        patch=cfg.patch,
        drop_path=cfg.drop_path,
        grad_checkpointing=cfg.grad_checkpointing,
        embed_dim=cfg.student_dim,
        depth=cfg.student_depth,
        heads=cfg.student_heads,
        pos_gain=cfg.student_pos_gain,
    )


def predictor_config(cfg: TrainConfig, student: StudentConfig) -> PredictorConfig:
    return PredictorConfig.for_student(
        student,
        out_dim=cfg.teacher_dim,
        width=cfg.predictor_width,
        depth=cfg.predictor_depth,
        heads=cfg.predictor_heads,
        ctx_pos=cfg.predictor_ctx_pos,
        drop_path=cfg.drop_path,
        grad_checkpointing=cfg.grad_checkpointing,
    )


def build_model(cfg: TrainConfig, num_frames: int, img_size: int) -> SaltModel:
    """Student + predictor (predicting ``cfg.teacher_dim`` channels) with the config's loss.

    Initialisation draws from torch's global RNG: seed it first for reproducible weights.
    """
    try:
        s_cfg = student_config(cfg, num_frames, img_size)
        p_cfg = predictor_config(cfg, s_cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return SaltModel(Student(s_cfg), Predictor(p_cfg), loss=cfg.loss,
                     target_center=cfg.target_center)


def mask_config(cfg: LoopConfig) -> MaskConfig:
    """Masks of the config: ``ratio`` (the seed's single group), V-JEPA ``multiblock``, ...

    Also used for stage-1 configs (the mask keys are :class:`LoopConfig`'s).
    ``mask_temporal_scale`` sets the time extent of the multiblock groups' blocks (V-JEPA's
    (1, 1): every block spans the clip); ``mask_temporal_group`` appends a temporal-split
    group (``salt_vla/masking/temporal.py``).
    """
    scale = tuple(cfg.mask_temporal_scale)
    try:
        groups = VJEPA_GROUPS if scale == (1.0, 1.0) else tuple(
            replace(g, temporal_scale=scale) for g in VJEPA_GROUPS)
        return MaskConfig(
            strategy=cfg.mask_strategy, ratio=cfg.mask_ratio, truncate=cfg.mask_truncate,
            groups=groups, temporal_group=cfg.mask_temporal_group,
            temporal_direction=cfg.mask_temporal_direction,
            temporal_max_context=cfg.mask_temporal_max_context,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
