"""A content item -> one unit vector per modality, for a micro-batch of items at a time.

For each item: text from title, description and tags (``recstream.encoders.text.item_text``); its
``image_uri``, ``video_uri`` and ``audio_uri`` fetched (``recstream.encoders.media``, concurrently
across the batch, at most ``MediaSettings.concurrency`` at once) and decoded in worker threads. Then
each encoder gets ONE call for the whole batch, in one inference thread, off the event loop:
text for every text, image for every image and sampled video frame, audio for every block of
every audio file and sound track.

How parts combine (both in the model's own space, so averaging is meaningful):
- "image" = normalised mean of [the image's vector, the video's vector], where the video's
  vector is the normalised mean of its frames' vectors: a still image and a whole video count
  equally, however many frames were sampled.
- "audio" = normalised mean of [the audio file's vector, the video's sound track's vector],
  each the centred, normalised mean of its 2.32 s blocks.
A part that fails (bad URI, refused or failed fetch, over a limit, undecodable media) is
recorded in ``failures`` as (field, reason) and the item keeps what worked; a video without a
sound track simply adds no audio. Nothing about bad media raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recstream.encoders.audio import (
    AudioDecodeError,
    AudioEncoder,
    blocks,
    center_normalize,
    decode_audio,
    log_mel,
)
from recstream.encoders.image import ImageDecodeError, ImageEncoder, preprocess
from recstream.encoders.media import MediaError, MediaFetcher, shorten
from recstream.encoders.settings import EncoderSettings, MediaSettings
from recstream.encoders.text import TextEncoder, item_text
from recstream.encoders.video import VideoDecodeError, decode_video

logger = logging.getLogger(__name__)


class ContentItemLike(Protocol):
    """What encoding reads of an item (read-only: streams.schemas.ContentItem's list of tags
    is one)."""

    @property
    def title(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...
    @property
    def tags(self) -> Sequence[str] | None: ...
    @property
    def image_uri(self) -> str | None: ...
    @property
    def video_uri(self) -> str | None: ...
    @property
    def audio_uri(self) -> str | None: ...


@dataclass
class EncodedItem:
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32 unit [d]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (part, reason)


@dataclass
class _Prepared:
    """One item's decoded media, waiting for the batched model calls."""

    pixels: list[np.ndarray] = field(default_factory=list)  # image first if any, then frames
    has_image: bool = False
    audio_blocks: list[np.ndarray] = field(default_factory=list)  # [k, 100, 96] per clip
    failures: list[tuple[str, str]] = field(default_factory=list)


class ContentEncoder:
    """The encoders of the enabled modalities and a media fetcher, as one batch operation.

    ``dims``: vector size per enabled modality, e.g. {"text": 384, "image": 1280, "audio": 512}.
    ``encode(items)`` must be awaited on one event loop at a time; ``close()`` (or ``aclose()``
    from async code) releases the threads and HTTP connections.
    """

    def __init__(
        self,
        text: Any | None,
        image: ImageEncoder | None,
        audio: AudioEncoder | None,
        fetcher: MediaFetcher,
        encoder_settings: EncoderSettings,
    ) -> None:
        self.text, self.image, self.audio = text, image, audio
        self.fetcher = fetcher
        self.settings = encoder_settings
        self.dims: dict[str, int] = {
            name: enc.dim
            for name, enc in (("text", text), ("image", image), ("audio", audio))
            if enc is not None
        }
        # Decoding (Pillow, PyAV, FFTs) releases the GIL for most of its time.
        self._decode_pool = ThreadPoolExecutor(2, thread_name_prefix="media-decode")
        # One inference thread: the models run one after another, each with all cores.
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self._limits: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    @classmethod
    def from_settings(cls, encoder: EncoderSettings, media: MediaSettings) -> ContentEncoder:
        """Open (exporting on first use) the encoders ``encoder.modalities`` asks for."""
        common: dict[str, Any] = {
            "device": encoder.device,
            "intra_op_threads": encoder.intra_op_threads,
            "spin": encoder.spin,
        }
        text: Any | None = None
        if "text" in encoder.modalities:
            if encoder.text_model == "use":
                from recstream.encoders.text_use import UseTextEncoder

                text = UseTextEncoder(encoder.model_dir, **common)
            else:
                text = TextEncoder(
                    encoder.model_dir,
                    max_tokens=encoder.max_tokens,
                    int8=encoder.int8,
                    fp16=encoder.fp16,
                    **common,
                )
        media_opts = {"int8": encoder.int8, "fp16": encoder.fp16, **common}
        image = (
            ImageEncoder(encoder.model_dir, **media_opts) if "image" in encoder.modalities else None
        )
        audio = (
            AudioEncoder(encoder.model_dir, **media_opts) if "audio" in encoder.modalities else None
        )
        return cls(text, image, audio, MediaFetcher(media), encoder)

    async def encode(self, items: Sequence[ContentItemLike]) -> list[EncodedItem]:
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(*(self._prepare(item) for item in items))
        texts = [item_text(i.title, i.description, i.tags) for i in items]
        text_vecs, pixel_vecs, block_vecs = await loop.run_in_executor(
            self._infer_pool, self._infer, texts, prepared
        )
        return self._assemble(texts, prepared, text_vecs, pixel_vecs, block_vecs)

    def _limit(self) -> asyncio.Semaphore:
        """Bounds concurrent fetches; one semaphore per event loop (they bind to one)."""
        loop = asyncio.get_running_loop()
        if loop not in self._limits:
            self._limits = {loop: asyncio.Semaphore(self.fetcher.settings.concurrency)}
        return self._limits[loop]

    # -- stages ------------------------------------------------------------------------------

    async def _prepare(self, item: ContentItemLike) -> _Prepared:
        """Fetch and decode an item's media, its parts concurrently; merged in a fixed order
        (image before video frames, audio file before sound track)."""
        wanted = {
            "image_uri": self.image is not None,
            "video_uri": self.image is not None or self.audio is not None,
            "audio_uri": self.audio is not None,
        }
        names = [n for n in wanted if wanted[n] and getattr(item, n, None)]
        parts = await asyncio.gather(*(self._part(n, getattr(item, n)) for n in names))
        out = _Prepared()
        for part in parts:  # names are in image, video, audio order
            out.pixels += part.pixels
            out.has_image = out.has_image or part.has_image
            out.audio_blocks += part.audio_blocks
            out.failures += part.failures
        return out

    async def _part(self, name: str, uri: str) -> _Prepared:
        out = _Prepared()
        try:
            async with self._limit():
                data = await self.fetcher.fetch(uri)
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self._decode_pool, self._decode, name, data)
        except MediaError as exc:
            out.failures.append((name, str(exc)))
        except (ImageDecodeError, AudioDecodeError, VideoDecodeError, ValueError) as exc:
            out.failures.append((name, f"{shorten(uri)}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes raise anything
            logger.warning("undecodable %s %s", name, shorten(uri), exc_info=True)
            out.failures.append((name, f"{shorten(uri)} is not decodable media: {exc!r}"))
        return out

    def _decode(self, name: str, data: bytes) -> _Prepared:
        """CPU part of preparing one medium (in a decode-pool thread)."""
        s = self.settings
        out = _Prepared()
        if name == "image_uri":
            out.pixels.append(preprocess(data))
            out.has_image = True
        elif name == "audio_uri":
            samples = decode_audio(data, s.audio_max_seconds)
            if samples is None:
                raise AudioDecodeError("the file has no audio stream")
            out.audio_blocks.append(blocks(log_mel(samples)))
        else:
            video = decode_video(data, s.video_fps, s.video_max_frames, s.audio_max_seconds)
            if self.image is not None:
                out.pixels = [preprocess(f) for f in video.frames]
            if video.audio is not None and self.audio is not None:
                out.audio_blocks.append(blocks(log_mel(video.audio)))
            if video.audio_error:
                out.failures.append(("video_uri", video.audio_error))
        return out

    def _infer(
        self, texts: list[str], prepared: Sequence[_Prepared]
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The batch's one call per encoder (in the inference thread)."""
        text_vecs = None
        if self.text is not None and any(texts):
            text_vecs = self.text.encode([t for t in texts if t])
        pixel_vecs = None
        pixels = [p for item in prepared for p in item.pixels]
        if self.image is not None and pixels:
            pixel_vecs = self.image.encode_pixels(np.stack(pixels))
        block_vecs = None
        mel = [b for item in prepared for b in item.audio_blocks]
        if self.audio is not None and mel:
            block_vecs = self.audio.block_embeddings(np.concatenate(mel))
        return text_vecs, pixel_vecs, block_vecs

    def _assemble(
        self,
        texts: list[str],
        prepared: Sequence[_Prepared],
        text_vecs: np.ndarray | None,
        pixel_vecs: np.ndarray | None,
        block_vecs: np.ndarray | None,
    ) -> list[EncodedItem]:
        results: list[EncodedItem] = []
        t = p = b = 0
        for text, prep in zip(texts, prepared, strict=True):
            item = EncodedItem(failures=list(prep.failures))
            if text and text_vecs is not None:
                item.vectors["text"] = text_vecs[t]
                t += 1
            if prep.pixels and pixel_vecs is not None:
                own = pixel_vecs[p : p + len(prep.pixels)]
                p += len(prep.pixels)
                parts = []
                if prep.has_image:
                    parts.append(own[0])
                frames = own[1:] if prep.has_image else own
                if len(frames):
                    parts.append(_unit(frames.mean(axis=0)))
                item.vectors["image"] = _unit(np.mean(parts, axis=0))
            if prep.audio_blocks and block_vecs is not None and self.audio is not None:
                clips = []
                for clip in prep.audio_blocks:
                    clips.append(block_vecs[b : b + len(clip)].mean(axis=0))
                    b += len(clip)
                unit_clips = center_normalize(np.stack(clips), self.audio.mean)
                item.vectors["audio"] = _unit(unit_clips.mean(axis=0))
            results.append(item)
        return results

    # -- shutdown ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self.fetcher.close()
        self._shutdown_pools()

    def close(self) -> None:
        """Release threads and HTTP connections (from sync code; ``aclose`` from async)."""
        session = self.fetcher._session
        if session is not None and not session.closed:
            try:
                asyncio.get_running_loop().create_task(self.fetcher.close())
            except RuntimeError:  # no loop running here: close on the session's own loop
                loop = session._loop
                if not loop.is_closed():
                    loop.run_until_complete(self.fetcher.close())
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
