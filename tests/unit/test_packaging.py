"""recstream as it is installed, not as the checkout happens to be importable: one top-level
import package, every module importable from elsewhere, the package data found through it.
(pytest puts the checkout on sys.path for the tests, so these run in a child process that
starts outside it.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import importlib, importlib.resources, importlib.util, pkgutil, sys
import recstream, recstream.streams, recstream.encoders, recstream.ranking
assert importlib.util.find_spec("streams") is None
assert importlib.util.find_spec("ranking") is None
assert importlib.util.find_spec("encoders") is None
assert importlib.util.find_spec("benchmarks") is None
skip = {"recstream.encoders.export.__main__"}
names = []
for pkg in (recstream, recstream.streams, recstream.encoders, recstream.ranking):
    for m in pkg_walk(pkg):
        names.append(m)
for name in names:
    if name not in skip:
        importlib.import_module(name)
from recstream.streams.demo import load_catalog, load_personas
assert len(load_catalog()) > 100 and load_personas()
pom = importlib.resources.files("recstream.streams").joinpath("data/kafka/pom.xml")
assert b"kafka_2.13" in pom.read_bytes()
print(len(names))
"""

WALK = """
def pkg_walk(pkg):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        yield info.name
"""


def test_every_module_imports_from_outside_the_checkout(tmp_path: Path) -> None:
    code = "import pkgutil\n" + WALK + CHECK
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.strip().splitlines()[-1]) > 40
