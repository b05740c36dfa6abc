"""Config files named on the command line, read before the CLI parses them: malformed YAML names its file.

The CLI's parser reports a YAML syntax error against ``"<unicode string>"``, without the file it came from; reading
each ``--config`` file here first turns that into one line with the file, line and column.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from urpo.errors import ConfigError


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
    """Raise :class:`ConfigError` for a ``--config`` file that is missing or is not valid YAML."""
    for value in config_paths(argv):
        path = Path(value)
        if value.lstrip().startswith(("{", "[")) or "\n" in value:
            continue  # an inline YAML/JSON string, not a file name
        if not path.is_file():
            raise ConfigError(f"config file {value} does not exist")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{value}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else value
            problem = getattr(error, "problem", None) or str(error)
            context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
            if context and start is not None:
                problem += f" ({context} at line {start.line + 1})"
            raise ConfigError(f"{where}: invalid YAML: {problem}; fix the file and rerun") from error


__all__ = ["check_config_files", "config_paths"]
