"""onnxruntime sessions on the device that really runs them.

onnxruntime-gpu lists CUDAExecutionProvider as "available" whenever the GPU build is installed,
GPU or not; when the CUDA/cuDNN libraries or the GPU are missing it logs an error and silently
runs on CPU. So the provider list we ask for is only a wish: ``session.get_providers()`` tells
what runs, and that is what we check, log and expose.
"""

from __future__ import annotations

import ctypes.util
import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def create_session(
    path: str | Path, device: Device = "auto", intra_op_threads: int = 0
) -> ort.InferenceSession:
    """Open an ONNX model for inference.

    device: "cpu"; "cuda" (raise RuntimeError if the session does not really run on CUDA);
    "auto" (CUDA when it really works, else CPU). intra_op_threads: threads per operator,
    0 lets onnxruntime choose (one per physical core).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if intra_op_threads < 0:
        raise ValueError("intra_op_threads must be >= 0")

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads

    cuda_listed = CUDA in ort.get_available_providers()
    if device == "cuda" and not cuda_listed:
        raise RuntimeError(
            f"device='cuda' but this onnxruntime build has no {CUDA} "
            f"(installed: onnxruntime {ort.__version__}, providers "
            f"{ort.get_available_providers()}); install onnxruntime-gpu or use device='auto'"
        )
    # On "auto" without any NVIDIA driver, asking for CUDA can only fail, and onnxruntime would
    # print a red library-load error on every start of a CPU-only worker. Skip the attempt
    # there. With a driver present we do try, and keep onnxruntime's log: it is the only place
    # that says which CUDA/cuDNN library is missing. (Its logger is process-global, so we do not
    # silence it behind the caller's back.)
    want_cuda = device == "cuda" or (device == "auto" and cuda_listed and _nvidia_driver_present())
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


def session_provider(session: ort.InferenceSession) -> str:
    """The execution provider that runs the session's nodes first (e.g. "CPUExecutionProvider")."""
    providers: list[str] = session.get_providers()
    return providers[0] if providers else CPU


def _nvidia_driver_present() -> bool:
    """Cheap, import-free check for an NVIDIA driver (Linux /proc entry or libcuda)."""
    if Path("/proc/driver/nvidia/version").exists():
        return True
    # libcuda is the driver's user-space library; found also on WSL2, which has no /proc entry.
    return ctypes.util.find_library("cuda") is not None
