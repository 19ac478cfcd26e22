"""What both training commands (`salt train`, `salt teacher train`) settle before a run starts.

Both stages run on one loop with one run-directory contract, so they check --resume's
argument, resolve the W&B mode and settle the config the same way, here, once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from salt_vla.cli.common import fail, main_rank_echo

if TYPE_CHECKING:
    from salt_vla.trainer.run_config import Settled, Stage

EXIT_CODES_HELP = (
    "Exit code: 0 when the run ended as planned (every step, or --set stop_at); 1 on an "
    "error; 130 (Ctrl-C, SIGINT) or 143 (SIGTERM, e.g. a preemption) when a signal stopped "
    "it after writing its checkpoint: resume it with --resume. So `salt train ... && salt "
    "export RUN` never exports a preempted run."
)


@dataclass(frozen=True)
class RunStart:
    """What both training commands settle before building the run."""

    echo: Callable[[str], None]  # prints on rank 0 only
    main_rank: bool
    out: Path | None
    resume: str | None  # RunSpec.resume: None, "yes", "auto" or a checkpoint path
    wandb: str

    def run_dir(self, settled: Settled) -> Path:
        """--out, else runs/<name>; prints it and the config's origin (and any notes)."""
        for note in settled.notes:
            self.echo(f"warning: {note}")
        self.echo(f"config: {settled.source}")
        run_dir = self.out if self.out is not None else Path("runs") / settled.cfg.name
        origin = "--out" if self.out is not None else "default runs/<name>"
        self.echo(f"run dir: {run_dir}  ({origin})")
        return run_dir


def run_start(
    stage: Stage, exp: str | None, config: Path | None, sets: list[str], out: Path | None,
    resume: bool, resume_from: str | None, wandb: str | None,
) -> tuple[RunStart, Settled]:
    """Check --resume's argument, resolve the W&B mode and settle the config."""
    from salt_vla.trainer.metrics_log import resolve_wandb_mode
    from salt_vla.trainer.run_config import settle

    echo, main_rank = main_rank_echo()
    if resume_from is not None and not resume:
        raise fail(f"unexpected argument {resume_from!r} (did you mean --resume {resume_from}?)")
    mode = resolve_wandb_mode(wandb)
    resume_value = ("yes" if resume_from is None else resume_from) if resume else None
    settled = settle(stage, exp, config, sets, out, resume_value)
    return RunStart(echo, main_rank, out, resume_value, mode), settled


def command_line() -> tuple[str, ...]:
    """This process's command line as the user typed it (config.json's ``argv``)."""
    return ("salt", *sys.argv[1:])
