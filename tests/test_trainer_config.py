"""Experiment presets, `--set` overrides and `salt exp`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from salt_vla.cli import app
from salt_vla.errors import ConfigError
from salt_vla.trainer.build import config_grid, mask_config
from salt_vla.trainer.experiments import (
    PRESETS,
    TrainConfig,
    parse_overrides,
    resolve,
    valid_keys,
)
from salt_vla.trainer.loop_config import diff


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves(name: str) -> None:
    cfg = resolve(name)
    assert cfg.name == name
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    mask_config(cfg)  # the mask settings are valid for the masking package
    config_grid(cfg)  # the view preset exists and divides into tubelets


def test_seed_presets_match_the_issue() -> None:
    want = {
        "baseline": (1.5e-4, 1e-5, 1000, 10, 0.75),
        "exp1": (3e-4, 3e-5, 500, 3, 0.75),
        "exp2": (1.5e-4, 1e-5, 500, 3, 0.9),
        "exp3": (3e-4, 3e-5, 500, 3, 0.9),
        "exp3-vjepa-masks": (3e-4, 3e-5, 500, 3, 0.9),
    }
    for name, (lr, min_lr, warmup, epochs, ratio) in want.items():
        c = PRESETS[name]
        assert (c.lr, c.min_lr, c.warmup_steps, c.epochs, c.mask_ratio) == (
            lr, min_lr, warmup, epochs, ratio), name
        assert (c.student, c.batch_size, c.betas) == ("base", 32, (0.9, 0.95)), name
        assert (c.weight_decay, c.weight_decay_end, c.grad_clip) == (0.04, 0.4, 0.02), name
        assert (c.predictor_width, c.predictor_depth, c.loss) == (384, 12, "mse"), name
        assert c.grad_checkpointing is False, name
        want_masks = "multiblock" if name == "exp3-vjepa-masks" else "ratio"
        assert c.mask_strategy == want_masks, name
    assert mask_config(PRESETS["exp3-vjepa-masks"]).num_groups == 2
    assert mask_config(PRESETS["exp3"]).num_groups == 1


def test_exp_show_prints_values_as_toml() -> None:
    tomllib = pytest.importorskip("tomllib")
    result = CliRunner().invoke(app, ["exp", "show", "exp3"])
    assert result.exit_code == 0, result.output
    values = tomllib.loads(result.output)
    assert values["lr"] == 3e-4 and values["min_lr"] == 3e-5
    assert values["warmup_steps"] == 500 and values["epochs"] == 3
    assert values["mask_ratio"] == 0.9 and values["grad_clip"] == 0.02
    assert values["betas"] == [0.9, 0.95]
    assert "student_dim" not in values  # None: a commented-out line (TOML has no null)
    assert "# student_dim" in result.output


def test_exp_list_names_every_preset() -> None:
    result = CliRunner().invoke(app, ["exp", "list"])
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert name in result.output


def test_overrides_are_typed() -> None:
    got = parse_overrides(["lr=3e-4", "betas=0.9,0.99", "compile=true", "student_dim=none",
                           "epochs=5", "loss=l1"])
    assert got == {"lr": 3e-4, "betas": (0.9, 0.99), "compile": True, "student_dim": None,
                   "epochs": 5, "loss": "l1"}
    cfg = resolve("exp3", ["lr=1e-4", "grad_clip=10"])
    assert cfg.lr == 1e-4 and cfg.grad_clip == 10.0 and cfg.min_lr == 3e-5


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        resolve("exp3", ["lrr=1e-4"])
    msg = str(e.value)
    assert "'lrr'" in msg and "did you mean 'lr'" in msg
    for key in ("lr", "mask_ratio", "skip_nonfinite", "grad_clip"):
        assert key in msg


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("lr=fast", "expected a float"),
        ("epochs=2.5", "expected an int"),
        ("compile=maybe", "expected a bool"),
        ("betas=0.9", "expected 2 comma-separated values"),
        ("lr", "expected key=value"),
        ("loss=huber", "loss='huber': choose one of mse, l1"),
        ("mask_ratio=1.5", "mask_ratio=1.5"),
        ("batch_size=0", "batch_size=0: must be > 0"),
        ("targets=online", "needs the teacher: --teacher PATH"),
    ],
)
def test_bad_overrides_are_refused(item: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        resolve("exp3", [item])
    assert fragment in str(e.value)


def test_cli_refuses_bad_override_with_valid_keys() -> None:
    result = CliRunner().invoke(app, ["train", "--exp", "tiny", "--set", "nope=1"])
    assert result.exit_code != 0
    assert "unknown config key 'nope'" in result.output
    assert "mask_ratio" in result.output


def test_unknown_experiment() -> None:
    with pytest.raises(ConfigError, match="did you mean 'exp3'"):
        resolve("exp33")


def test_diff_ignores_runtime_keys() -> None:
    a = resolve("tiny")
    assert diff(a, resolve("tiny", ["num_workers=0", "log_every=1"])) == []
    assert diff(a, resolve("tiny", ["lr=0.5"])) == ["lr: 0.001 -> 0.5"]
    assert set(valid_keys()) >= {"lr", "skip_nonfinite", "grad_accum"}


def _float_keys(cls: type) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)
            if isinstance(f.default, float) or (isinstance(f.default, tuple) and f.default
                                                and isinstance(f.default[0], float))]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_for_every_float_key(value: str) -> None:
    """NaN passes every range check (`lr < 0` is False): `lr=nan` used to end in a torch
    traceback, `grad_clip=nan` silently turned clipping off, `lr=inf` died at step 2."""
    from salt_vla.trainer.teacher_experiments import TeacherTrainConfig, resolve_teacher

    for cls, make, preset in ((TrainConfig, resolve, "exp3"),
                              (TeacherTrainConfig, resolve_teacher, "teacher-tiny")):
        keys = _float_keys(cls)
        assert {"lr", "min_lr", "grad_clip", "mask_ratio", "eps", "betas"} <= set(keys)
        for k in keys:
            pair = isinstance(getattr(cls(), k), tuple)  # betas, mask_temporal_scale
            item = f"{k}={value},0.9" if pair else f"{k}={value}"
            with pytest.raises(ConfigError) as e:
                make(preset, [item])
            assert f"{k}=" in str(e.value) and "must be a finite number" in str(e.value), item


def test_cli_names_a_nan_key_without_a_traceback() -> None:
    result = CliRunner().invoke(app, ["train", "--exp", "tiny", "--set", "lr=nan",
                                      "--set", "grad_clip=inf"])
    assert result.exit_code == 1
    assert "lr=nan: must be a finite number" in result.output
    assert "grad_clip=inf: must be a finite number" in result.output
    assert "Traceback" not in result.output


def test_probe_and_synth_configs_refuse_non_finite_floats() -> None:
    from salt_vla.data.synth import SynthConfig, SynthError
    from salt_vla.eval.probe import ProbeConfig

    for k in ("lr", "weight_decay", "warmup_epochs", "mlp_ratio"):
        with pytest.raises(ConfigError, match=f"probe {k}=nan: must be a finite number"):
            ProbeConfig(**{k: float("nan")})
    for k in ("noise", "jitter", "flicker", "background"):
        with pytest.raises(SynthError, match=f"{k}=inf: must be a finite number"):
            SynthConfig(**{k: float("inf")})
    with pytest.raises(SynthError, match="splits="):
        SynthConfig(splits=(0.7, float("nan"), 0.15))
