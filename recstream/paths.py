"""Where recstream keeps its files when nothing says otherwise."""

from __future__ import annotations

from pathlib import Path


def default_home() -> Path:
    """~/.cache/recstream: exported models, Kafka's jars, fetched datasets, local data."""
    return Path.home() / ".cache" / "recstream"
