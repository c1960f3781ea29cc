"""Video decoding for the encoders: sampled frames for the image model, the sound track for the
audio model. PyAV (ffmpeg) decodes; nothing here runs a model.

Frames are taken at ``fps`` frames per second of video time (the first at t=0), at most
``max_frames`` of them, so a long video costs the same as a short one once the cap is reached;
decoding stops there. Each kept frame is scaled by ffmpeg's swscale so its short side is 256
(the image model's resize) before it becomes a numpy array. The sound track is decoded up to
``max_audio_seconds``. A video without a sound track is normal: ``audio`` is None.

How the pipeline pools them (``recstream.encoders.pipeline``): frame embeddings are averaged into
one image-space vector; the track goes through the audio encoder like any clip.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import numpy as np

from recstream.encoders.audio import decode_audio_stream
from recstream.encoders.image import RESIZE

# Frames larger than 8K UHD are refused: decoding each would cost more than an item is worth.
MAX_PIXELS = 7680 * 4320


class VideoDecodeError(ValueError):
    """The bytes hold no decodable video (the message says why)."""


@dataclass
class DecodedVideo:
    frames: list[np.ndarray]  # uint8 [H, W, 3] RGB, short side 256
    audio: np.ndarray | None  # mono float32 44.1 kHz, or None without a sound track
    audio_error: str | None = None  # the track exists but could not be decoded


def decode_video(
    data: bytes, fps: float = 1.0, max_frames: int = 16, max_audio_seconds: float = 30.0
) -> DecodedVideo:
    """Decode ``data`` (MP4, WebM, MKV, AVI, GIF...) into sampled frames and its sound track.

    Raises VideoDecodeError when there is no video stream or no frame can be decoded.
    """
    if fps <= 0 or max_frames < 1:
        raise ValueError("fps must be > 0 and max_frames >= 1")
    try:
        frames = _frames(data, fps, max_frames)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise VideoDecodeError(f"not a decodable video: {exc}") from exc
    audio: np.ndarray | None = None
    audio_error: str | None = None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if container.streams.audio:
                audio = decode_audio_stream(container, max_audio_seconds)
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        audio_error = f"the video's sound track is not decodable: {exc}"
    return DecodedVideo(frames, audio, audio_error)


def _frames(data: bytes, fps: float, max_frames: int) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise VideoDecodeError("the file has no video stream")
        stream = container.streams.video[0]
        pixels = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if pixels > MAX_PIXELS:
            raise VideoDecodeError(f"video frames of {pixels} pixels are over {MAX_PIXELS}")
        stream.thread_type = "AUTO"  # frame/slice threads inside ffmpeg's decoder
        step = 1.0 / fps
        next_t = 0.0
        frames: list[np.ndarray] = []
        for index, frame in enumerate(container.decode(stream)):
            # Streams without timestamps (some GIFs, raw) count frames at the declared rate.
            t = frame.time if frame.time is not None else index / float(stream.average_rate or 25)
            if t + 1e-6 < next_t:
                continue
            frames.append(_scaled_rgb(frame))
            if len(frames) >= max_frames:
                break
            # The next sampling instant after t (frames may be sparse or irregular).
            next_t = (math.floor(t / step + 1e-6) + 1) * step
        if not frames:
            raise VideoDecodeError("the video stream holds no decodable frame")
        return frames


def _scaled_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The frame as RGB uint8 with its short side scaled to 256 (never up-scaled below)."""
    width, height = frame.width, frame.height
    scale = RESIZE / min(width, height)
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return frame.to_ndarray(format="rgb24", width=width, height=height)
