"""Run management: the run-directory contract (``rundir``), the heartbeat, and on top of
them `salt status`, `salt sweep` and `salt report`.

Layering inside this package (no cycles): ``rundir`` <- ``heartbeat``; ``smoothing`` and
``sweep_dir`` stand alone; ``status`` reads runs and sweep directories; ``sweep_spec`` <-
``sweep`` (which uses ``status``); ``report`` uses ``status``. The trainer imports only
``rundir`` and ``heartbeat`` (it writes the run directory); ``rundir`` imports no trainer.
"""
