"""The README's configuration table names every setting (so it cannot drift silently)."""

from __future__ import annotations

import re
from pathlib import Path

from recstream.streams.settings import Settings

SECTIONS = ("kafka", "qdrant", "encoder", "media", "ranking")
CLASSES = (Settings, *(Settings.model_fields[s].annotation for s in SECTIONS))
PREFIXES = sorted((c.model_config["env_prefix"] for c in CLASSES), key=len, reverse=True)  # type: ignore[union-attr]


def env_names() -> set[str]:
    return {
        f"{c.model_config['env_prefix']}{field.upper()}"  # type: ignore[union-attr]
        for c in CLASSES
        for field in c.model_fields  # type: ignore[union-attr]
        if field not in SECTIONS
    }


def table_names(readme: str) -> set[str]:
    """Names in the table; a row may abbreviate its section's names as `_REST` after a full
    one (`RECSTREAM_KAFKA_CONTENT_TOPIC`, `_EVENTS_TOPIC`)."""
    table = readme[readme.index("## Configuration") :]
    table = table[: table.index("\n## ", 1)]
    names = set()
    for row in table.splitlines():
        first = re.search(r"`(RECSTREAM_[A-Z0-9_]+)`", row)
        if first is None:
            continue
        prefix = next(p for p in PREFIXES if first.group(1).startswith(p))
        names |= set(re.findall(r"`(RECSTREAM_[A-Z0-9_]+)`", row))
        names |= {prefix + s for s in re.findall(r"`_([A-Z0-9_]+)`", row)}
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = table_names(readme)
    assert not env_names() - listed, f"missing from the README: {sorted(env_names() - listed)}"
    assert not listed - env_names(), f"no such setting: {sorted(listed - env_names())}"


def test_the_readme_plugin_example_is_the_one_the_tests_run() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    example = readme[readme.index("```python\nfrom recstream.testing") :]
    example = example[len("```python\n") : example.index("```", 3)]
    body = example[example.index("def test_") :]
    tested = (root / "tests/integration/test_testing_plugin.py").read_text()
    assert "from recstream.testing import Recstream" in tested
    assert body in tested
