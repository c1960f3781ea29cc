"""onnxruntime sessions on the device that really runs them.

onnxruntime-gpu lists CUDAExecutionProvider as "available" whenever the GPU build is installed,
GPU or not; when the CUDA/cuDNN libraries or the GPU are missing it logs an error and silently
runs on CPU. So the provider list we ask for is only a wish: ``session.get_providers()`` tells
what runs, and that is what we check, log and expose.

``OnnxModel`` picks the file variant for the device that really runs: on CPU the int8 file when
asked (``EncoderSettings.int8``); on CUDA an fp16 copy when asked (``EncoderSettings.fp16``),
made once beside the fp32 file, and I/O binding so outputs are fetched in one copy.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from recstream.encoders.model_cache import INT8_FILE, ONNX_FILE, read_export_info

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
FP16_FILE = "model.fp16.onnx"


def create_session(
    path: str | Path,
    device: Device = "auto",
    intra_op_threads: int = 0,
    spin: bool = False,
) -> ort.InferenceSession:
    """Open an ONNX model for inference.

    device: "cpu"; "cuda" (raise RuntimeError if the session does not really run on CUDA);
    "auto" (CUDA when it really works, else CPU). intra_op_threads: threads per operator,
    0 lets onnxruntime choose (one per physical core). spin: let idle pool threads busy-wait
    for work; off by default because on a small shared machine the spinning threads burn the
    cores the event loop, the tokenizer and the other encoders need (measured on 2 cores: MiniLM
    at batch 1 cost 19.8 ms of CPU per item spinning, 8.5 ms not).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if intra_op_threads < 0:
        raise ValueError("intra_op_threads must be >= 0")

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # One graph, one stream of nodes: parallelism comes from inside each operator.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    _register_custom_ops(options, path)

    cuda_listed = CUDA in ort.get_available_providers()
    if device == "cuda" and not cuda_listed:
        raise RuntimeError(
            f"device='cuda' but this onnxruntime build has no {CUDA} "
            f"(installed: onnxruntime {ort.__version__}, providers "
            f"{ort.get_available_providers()}); install onnxruntime-gpu or use device='auto'"
        )
    want_cuda = wants_cuda(device)
    providers = [CUDA, CPU] if want_cuda else [CPU]

    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    running = session_provider(session)
    if device == "cuda" and running != CUDA:
        raise RuntimeError(
            f"device='cuda' but onnxruntime fell back to {running} for {path}: no usable GPU, "
            "or CUDA/cuDNN libraries missing (see onnxruntime's log above); "
            "use device='auto' or 'cpu' to run on CPU"
        )
    if want_cuda and running != CUDA:
        logger.warning("CUDA requested for %s but unusable; running on %s", path, running)
    logger.info(
        "onnx session %s: provider %s (device=%s, intra_op_threads=%s)",
        Path(path).name,
        running,
        device,
        intra_op_threads or "auto",
    )
    return session


def wants_cuda(device: Device) -> bool:
    """Whether a session for ``device`` will ask for CUDA. On "auto" without any NVIDIA driver,
    asking for CUDA can only fail, and onnxruntime would print a red library-load error on every
    start of a CPU-only worker, so we skip the attempt there. With a driver present we do try,
    and keep onnxruntime's log: it is the only place that says which CUDA/cuDNN library is
    missing. (Its logger is process-global, so we do not silence it behind the caller's back.)
    """
    if device == "cpu":
        return False
    cuda_listed = CUDA in ort.get_available_providers()
    return device == "cuda" or (cuda_listed and _nvidia_driver_present())


def session_provider(session: ort.InferenceSession) -> str:
    """The execution provider that runs the session's nodes first (e.g. "CPUExecutionProvider")."""
    providers: list[str] = session.get_providers()
    return providers[0] if providers else CPU


class OnnxModel:
    """One single-output ONNX model on its device: ``run(feeds) -> float32 array``.

    ``export_dir`` holds model.onnx (and model.int8.onnx when exported). int8 is used only on
    CPU (dynamic-quantised MatMulInteger/ConvInteger have no fast CUDA kernels); fp16 only on
    CUDA (CPU fp16 kernels are few and slow). ``variant`` says which file runs. Thread-safe:
    an onnxruntime session may be run from several threads.
    """

    def __init__(
        self,
        export_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        int8: bool = False,
        fp16: bool = True,
        spin: bool = False,
        io_binding: bool | None = None,
    ) -> None:
        export_dir = Path(export_dir)
        path = export_dir / ONNX_FILE
        self.variant = "fp32"
        if int8 and not wants_cuda(device):
            if (export_dir / INT8_FILE).is_file():
                path, self.variant = export_dir / INT8_FILE, "int8"
            else:
                logger.warning("int8 asked but %s has no %s; using fp32", export_dir, INT8_FILE)
        session = create_session(path, device, intra_op_threads, spin)
        if session_provider(session) == CUDA:
            if int8:
                logger.info("int8 is a CPU option; %s runs fp32/fp16 on CUDA", export_dir.name)
            if fp16:
                fp16_path = _fp16_copy(export_dir / ONNX_FILE)
                if fp16_path is not None:
                    session = create_session(fp16_path, device, intra_op_threads, spin)
                    self.variant = "fp16"
        self.session = session
        self.provider = session_provider(session)
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_name = session.get_outputs()[0].name
        self.output_shape = session.get_outputs()[0].shape
        # I/O binding pays on CUDA only: the output stays on the device until one explicit copy,
        # and inputs go up in one copy each, without onnxruntime's per-run host staging.
        # ``io_binding=True`` forces it on CPU too (tests exercise the path there).
        self._io_binding = self.provider == CUDA if io_binding is None else io_binding
        self._device_type = "cuda" if self.provider == CUDA else "cpu"
        logger.info(
            "%s: %s on %s%s",
            export_dir.name,
            self.variant,
            self.provider,
            " with I/O binding" if self._io_binding else "",
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {name: feeds[name] for name in self.input_names}
        if not self._io_binding:
            (out,) = self.session.run([self.output_name], feeds)
        else:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            binding.bind_output(self.output_name, self._device_type)
            self.session.run_with_iobinding(binding)
            (out,) = binding.copy_outputs_to_cpu()
        return np.ascontiguousarray(out, dtype=np.float32)


_fp16_lock = threading.Lock()


def _fp16_copy(fp32_path: Path) -> Path | None:
    """model.fp16.onnx beside ``fp32_path`` (float16 weights and compute, float32 inputs and
    outputs so callers do not change), made once; None when ``onnx`` is not installed."""
    out = fp32_path.with_name(FP16_FILE)
    if out.is_file():
        return out
    try:
        import onnx
        from onnxruntime.transformers.float16 import (
            convert_float_to_float16,
        )
    except ImportError:
        logger.warning("fp16 asked but the onnx package is missing; running fp32 on CUDA")
        return None
    with _fp16_lock:
        if not out.is_file():
            model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
            tmp = out.with_name(f".{FP16_FILE}.{os.getpid()}")
            onnx.save(model, str(tmp))
            tmp.replace(out)  # atomic: a reader sees the whole file or none
    return out


def _register_custom_ops(options: Any, path: str | Path) -> None:
    """The multilingual USE graph tokenises in-graph with onnxruntime-extensions' custom ops;
    they are registered for every session (cheap) so any graph that needs them opens."""
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError:
        return
    options.register_custom_ops_library(get_library_path())


def _nvidia_driver_present() -> bool:
    """Cheap, import-free check for an NVIDIA driver (Linux /proc entry or libcuda)."""
    if Path("/proc/driver/nvidia/version").exists():
        return True
    # libcuda is the driver's user-space library; found also on WSL2, which has no /proc entry.
    return ctypes.util.find_library("cuda") is not None


class OnnxEncoder:
    """What every encoder module shares: its export directory, the export's record
    (export.json: model, parity) and the model running on its device. Subclasses open it with
    ``_open`` from their constructor and from ``from_export_dir``."""

    export_dir: Path
    info: dict[str, Any]
    dim: int
    _model: OnnxModel

    def _open(
        self,
        export_dir: Path,
        device: Device,
        intra_op_threads: int,
        *,
        int8: bool = False,
        fp16: bool = False,
        spin: bool = False,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.info = read_export_info(self.export_dir) or {}
        self._model = OnnxModel(
            self.export_dir, device, intra_op_threads, int8=int8, fp16=fp16, spin=spin
        )
        self.dim = int(self._model.output_shape[-1])

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider really in use, e.g. "CPUExecutionProvider"."""
        return self._model.provider

    @property
    def variant(self) -> str:
        """The model file that runs: "fp32", "int8" (CPU) or "fp16" (CUDA)."""
        return self._model.variant
