"""Audio encoder: aiSFX (ISMIR 2022 sound-effects embedding net, 512-d) run by onnxruntime.

Front end in numpy, no torch, no librosa: mono 44.1 kHz, peak-normalised; 2048-sample Hann
frames every 1024 samples (the first centred on sample 0); power spectrum; 96 HTK-mel
triangular bands over 0-22050 Hz, each band's weights summing to 1 (Essentia's MelBands with
htkMel warping and unit_sum, as the model was trained with); ``log10(1e4 * x + 1) / 9.4578``
(aiSFX's min-max constant). Blocks of 100 frames (2.32 s), the model's input length, one after
another; a shorter clip is zero-padded to one block.

Pooling and centring: the network ends in ReLU + max-pool, so every embedding is non-negative
and unrelated sounds score ~0.55 cosine. A clip's vector is the mean of its blocks'
embeddings minus a fixed mean vector (``mean.npy``, measured at export time over a fixed set of
reference sounds), L2-normalised; after centring, unrelated sounds score near 0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from recstream.encoders.base import Embeddings, empty_embeddings
from recstream.encoders.model_cache import MEAN_FILE, ensure_model
from recstream.encoders.runtime import Device, OnnxEncoder

AUDIO_MODEL_ID = "aisfx X-Sequential-CE (Ma & Lerch, ISMIR 2022), block mean, centred"
SAMPLE_RATE = 44100
FRAME = 2048
HOP = 1024
MELS = 96
BLOCK_FRAMES = 100  # 100 hops of 1024 samples: 2.32 s
LOG_MAX = 9.457798957824707  # aiSFX's spectrogram_normalize "original" max (min is 0)
BLOCK_SECONDS = BLOCK_FRAMES * HOP / SAMPLE_RATE
MAX_RUN = 64  # blocks per session run


class AudioDecodeError(ValueError):
    """The bytes hold no decodable audio (the message says why)."""


def decode_audio(data: bytes, max_seconds: float = 30.0) -> np.ndarray | None:
    """Decode the first audio stream of a file (WAV, MP3, OGG, FLAC, MP4...) with PyAV to mono
    float32 at 44.1 kHz, at most ``max_seconds`` long. Returns None when the container has no
    audio stream; raises AudioDecodeError when it cannot be read."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            return decode_audio_stream(container, max_seconds)
    except AudioDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise AudioDecodeError(f"not decodable audio: {exc}") from exc


def decode_audio_stream(container: av.container.InputContainer, max_seconds: float) -> np.ndarray:
    """Mono float32 44.1 kHz samples of ``container``'s first audio stream (at most
    ``max_seconds``). Shared with the video decoder for a video's sound track."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    have = 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1)
            chunks.append(chunk)
            have += len(chunk)
        if have >= limit:
            break
    else:
        for out in resampler.resample(None):  # flush the resampler's tail
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise AudioDecodeError("the audio stream holds no samples")
    return np.concatenate(chunks)[:limit].astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """float32 [1025, 96]: HTK-mel triangles over FFT bins, each band summing to 1."""
    bins = FRAME // 2 + 1
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, bins)
    mel = 2595.0 * np.log10(1.0 + freqs / 700.0)
    top = 2595.0 * np.log10(1.0 + (SAMPLE_RATE / 2) / 700.0)
    edges = np.linspace(0.0, top, MELS + 2)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    # Triangles linear in mel ("warping" weighting), evaluated at each bin's mel value.
    rise = (mel[None, :] - lower) / (centre - lower)
    fall = (upper - mel[None, :]) / (upper - centre)
    weights = np.clip(np.minimum(rise, fall), 0.0, None)
    sums = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(sums > 0, sums, 1.0)
    return np.ascontiguousarray(weights.T, dtype=np.float32)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return np.hanning(FRAME + 1)[:FRAME].astype(np.float32)  # periodic Hann


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Mono float32 samples at 44.1 kHz -> normalised log-mel float32 [frames, 96]."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0:
        x = x / peak
    # Frames centred on multiples of HOP, the first on sample 0 (zero padding either side).
    x = np.pad(x, (FRAME // 2, FRAME // 2))
    n = max(1, 1 + (len(x) - FRAME) // HOP)
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n]
    spectrum = np.fft.rfft(frames * _window(), axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    bands = power @ mel_filterbank()
    return (np.log10(1e4 * bands + 1.0) / LOG_MAX).astype(np.float32)


def blocks(spec: np.ndarray) -> np.ndarray:
    """[frames, 96] -> [blocks, 100, 96]: consecutive 100-frame blocks; a partial last block
    is dropped unless it is the only one, which is zero-padded (as aiSFX's ``blocking``)."""
    count = max(1, len(spec) // BLOCK_FRAMES)
    need = count * BLOCK_FRAMES
    if len(spec) < need:
        spec = np.vstack([spec, np.zeros((need - len(spec), MELS), np.float32)])
    return np.ascontiguousarray(spec[:need].reshape(count, BLOCK_FRAMES, MELS))


class AudioEncoder(OnnxEncoder):
    """``Encoder[np.ndarray]``: mono float32 44.1 kHz clips -> float32 [n, 512], unit rows.

    All blocks of all clips in a batch go through the model in one session run. Decode files
    with ``decode_audio`` first. A clip longer than the caller wants should be cut by the
    caller (``decode_audio(max_seconds=...)``): cost grows with length, 1 block per 2.32 s.
    """

    modality = "audio"
    model_id = AUDIO_MODEL_ID

    def __init__(
        self,
        model_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        int8: bool = False,
        fp16: bool = True,
        spin: bool = False,
    ) -> None:
        export_dir = ensure_model("audio", Path(model_dir))
        self._load(export_dir, device, intra_op_threads, int8, fp16, spin)

    @classmethod
    def from_export_dir(
        cls, export_dir: Path, device: Device = "cpu", intra_op_threads: int = 0, int8: bool = False
    ) -> AudioEncoder:
        self = cls.__new__(cls)
        self._load(Path(export_dir), device, intra_op_threads, int8, False, False)
        return self

    def _load(
        self, export_dir: Path, device: Device, threads: int, int8: bool, fp16: bool, spin: bool
    ) -> None:
        self._open(export_dir, device, threads, int8=int8, fp16=fp16, spin=spin)
        # Subtracted before normalising (raw aiSFX vectors are non-negative), made at export.
        self.mean = np.load(self.export_dir / MEAN_FILE).astype(np.float32)

    def block_embeddings(self, mel_blocks: np.ndarray) -> np.ndarray:
        """Raw (uncentred, non-negative) embeddings of [n, 100, 96] blocks: one session run."""
        if len(mel_blocks) == 0:
            return np.zeros((0, self.dim), np.float32)
        # Runs of at most MAX_RUN blocks bound activation memory (~2.5 MB per block).
        return np.concatenate(
            [
                self._model.run(
                    {"mel": np.ascontiguousarray(mel_blocks[i : i + MAX_RUN], np.float32)}
                )
                for i in range(0, len(mel_blocks), MAX_RUN)
            ]
        )

    def encode(self, inputs: Sequence[np.ndarray]) -> Embeddings:
        if isinstance(inputs, np.ndarray) and inputs.ndim == 1:
            raise TypeError("encode() takes a sequence of clips, not a single clip")
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        per_clip = [blocks(log_mel(clip)) for clip in inputs]
        raw = self.block_embeddings(np.concatenate(per_clip))
        bounds = np.cumsum([0] + [len(b) for b in per_clip])
        pooled = np.stack(
            [raw[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        )
        return center_normalize(pooled, self.mean)

    def __repr__(self) -> str:
        return f"AudioEncoder({self.export_dir}, {self.variant} on {self.provider}, dim={self.dim})"


def center_normalize(raw: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(raw - mean) / |raw - mean| per row; a row equal to the mean (silence) stays finite."""
    centred = np.asarray(raw, np.float32) - mean[None, :]
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.ascontiguousarray(centred / np.maximum(norms, 1e-12), dtype=np.float32)
