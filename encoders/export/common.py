"""What every export shares: the ONNX opset, parity checks, int8 quantisation, the lock
and atomic replacement of an export directory, provenance (versions, sha256)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstream.encoders.model_cache import (
    INT8_FILE,
    ONNX_FILE,
    ModelSpec,
    is_export_complete,
)

OPSET = 17
MIN_PARITY_COSINE = 0.9999
# An int8 variant below this is not kept: it would reorder neighbours too often to be a
# reasonable opt-in.
INT8_MIN_COSINE = 0.97


def export_locked(
    out_dir: Path, build: Callable[[Path], None], force: bool, spec: ModelSpec | None = None
) -> tuple[Path, bool]:
    """Run ``build(tmp_dir)`` under the lock and move the result to ``out_dir``.

    Returns (model path, whether this call exported). Nothing partial is ever left at out_dir.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        # Another process may have finished the export while we waited for the lock.
        if is_export_complete(out_dir, spec) and not force:
            return out_dir / ONNX_FILE, False
        remove_stale_temps(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the service may run as another user
            build(tmp)
            replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / ONNX_FILE, True


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

            class Reader(q.CalibrationDataReader):
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
        "sha256": sha256(out) if kept else None,
    }
    if not kept:
        out.unlink()
    return info


def versions(*extra: str) -> dict[str, str]:
    """Versions of the export toolchain and the weights packages, for export.json."""
    names = ("torch", "onnx", "onnxruntime-gpu", "onnxruntime", *extra)
    return {name: v for name in names if (v := _version(name)) is not None}


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an fcntl lock on ``path``; it is released by the kernel if the process dies."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def replace_dir(new: Path, dest: Path) -> None:
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


def remove_stale_temps(out_dir: Path) -> None:
    """Leftovers of exporters that died mid-way (we hold the lock, so none is running)."""
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for leftover in out_dir.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def sha256(path: Path) -> str:
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
