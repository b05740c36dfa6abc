"""Config files and options named on the command line, read before the CLI parses them.

The CLI's parser reports a YAML syntax error against ``"<unicode string>"``, without the file it came from; reading
each ``--config`` file here first turns that into one line with the file, line and column. A key that urpo renamed
or removed (:data:`RENAMED_KEYS`) fails here too, in one line naming its new place, rather than as the parser's
list of every key it expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from urpo.errors import ConfigError

SEED_RULE = "seed_everything is the run's one seed and every random stream derives from it (urpo.args)"

RENAMED_KEYS: dict[str, str] = {
    "model.model": "renamed to model.policy",
    "model.lora": "moved to model.policy.lora",
    "model.quantization": "moved to model.policy.quantization",
    "model.gradient_checkpointing": "moved to model.policy.gradient_checkpointing",
    "model.engine": "moved to model.rollout.engine",
    "model.vllm": "moved to model.rollout.vllm",
    "model.rollout_correction": "renamed to model.rollout.correction",
    "model.seed": f"removed: {SEED_RULE}",
    "model.rollout.vllm.seed": f"removed: {SEED_RULE}",
    "data.seed": f"removed: {SEED_RULE}",
}
"""Config keys of earlier urpo versions (dotted, from the config's top) and what became of each."""

SUBCOMMANDS = ("fit", "validate", "test")
"""Sections a config given before the subcommand (``urpo --config X fit``) may hold its settings under."""


def renamed_key(key: str) -> str | None:
    """The one-line error for a dotted config key (or any key below it) that was renamed or removed, else None."""
    parts = key.split(".")
    if parts and parts[0] in SUBCOMMANDS:
        parts = parts[1:]
    for end in range(len(parts), 0, -1):
        old = ".".join(parts[:end])
        if old in RENAMED_KEYS:
            return f"config key {old} was {RENAMED_KEYS[old]}"
    return None


def check_renamed_keys(config: Any, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` when a loaded config holds a key listed in :data:`RENAMED_KEYS`."""
    for key in _dotted_keys(config):
        message = renamed_key(key)
        if message is not None:
            raise ConfigError(f"{source}: {message}")


def _dotted_keys(config: Any, prefix: str = "") -> list[str]:
    if not isinstance(config, Mapping):
        return []
    keys = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if name != "init_args":  # class_path/init_args sections (rewards, optimizer) hold no urpo group
            keys += _dotted_keys(value, key + ".")
    return keys


def check_renamed_options(argv: list[str]) -> None:
    """Raise :class:`ConfigError` for a ``--section.key`` option on the command line that was renamed or removed."""
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("--config"):
            message = renamed_key(arg[2:].split("=", 1)[0])
            if message is not None:
                raise ConfigError(f"option {arg.split('=', 1)[0]}: {message}")


def config_paths(argv: list[str]) -> list[str]:
    """The values of every ``--config``/``-c`` option in ``argv`` (both ``--config X`` and ``--config=X``)."""
    paths = []
    for position, arg in enumerate(argv):
        if arg in ("--config", "-c") and position + 1 < len(argv):
            paths.append(argv[position + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def check_config_files(argv: list[str]) -> None:
    """Raise :class:`ConfigError` for a ``--config`` file that is missing, is not valid YAML or holds a renamed key,
    and for a renamed key given as an option."""
    check_renamed_options(argv)
    for value in config_paths(argv):
        path = Path(value)
        if value.lstrip().startswith(("{", "[")) or "\n" in value:
            check_renamed_keys(_inline(value), "config")
            continue  # an inline YAML/JSON string, not a file name
        if not path.is_file():
            raise ConfigError(f"config file {value} does not exist")
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{value}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else value
            problem = getattr(error, "problem", None) or str(error)
            context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
            if context and start is not None:
                problem += f" ({context} at line {start.line + 1})"
            raise ConfigError(f"{where}: invalid YAML: {problem}; fix the file and rerun") from error
        check_renamed_keys(config, value)


def _inline(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # the CLI's parser reports it


__all__ = ["RENAMED_KEYS", "check_config_files", "check_renamed_keys", "config_paths", "renamed_key"]
