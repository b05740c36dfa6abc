"""Paths of the shipped samples and the test fixtures, and a reader of their native records (imported by tests)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
SYNTHETIC = FIXTURES / "synthetic"
SAMPLES = Path(str(files("urpo.data") / "samples"))


def native_records(path: Path) -> list[dict[str, Any]]:
    """The records of a .jsonl or .json (list) file, as the adapters receive them."""
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
