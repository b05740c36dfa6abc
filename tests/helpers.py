"""Builders shared by tests and tools: tiny offline models (they live in tools/tiny_model.py, which tools use too)."""

from tools.tiny_model import CHATML, build_tiny_model, tiny_corpus

__all__ = ["CHATML", "build_tiny_model", "tiny_corpus"]
