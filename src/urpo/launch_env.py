"""Launchers set options through the environment: ``PL_FIT__TRAINER__NUM_NODES=2 urpo fit --config ...``.

LightningCLI's own environment support (``default_env``, on in ``urpo``) reads ``PL_<SUBCOMMAND>__<KEY>``
variables as *defaults*, which a ``--config`` file then overrides, so a launcher could not change a key the YAML
sets. urpo therefore also passes each such variable as a command-line option placed right after the config files:
it overrides the YAML, and options typed after it on the command line still override it. Nested keys are joined by
double underscores: ``PL_FIT__MODEL__GRPO__BETA=0`` is ``--model.grpo.beta 0``; ``PL_FIT__DATA__BATCH_SIZE=8`` is
``--data.batch_size 8``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

PREFIX = "PL"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def env_options(subcommand: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """``--section.key VALUE`` options from the ``PL_<SUBCOMMAND>__...`` variables, sorted by name.

    ``PL_FIT__CONFIG`` is left to LightningCLI itself (it names a config file, not a key).
    """
    environ = os.environ if environ is None else environ
    head = f"{PREFIX}_{subcommand.upper()}__"
    options = []
    for name in sorted(environ):
        if not name.startswith(head) or name == head + "CONFIG":
            continue
        key = ".".join(part.lower() for part in name[len(head) :].split("__"))
        options += [f"--{key}", environ[name]]
    return options


def with_env_options(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` with the environment's options inserted after its last ``--config`` (or after the subcommand)."""
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        return argv
    options = env_options(argv[0], environ)
    if not options:
        return argv
    position = 1
    for index, arg in enumerate(argv):
        if arg == "--config":
            position = index + 2
        elif arg.startswith("--config="):
            position = index + 1
    return argv[:position] + options + argv[position:]
