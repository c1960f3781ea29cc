"""The encoders' settings: ONNX models (``RECSTREAM_ENCODER_*``) and media fetching
(``RECSTREAM_MEDIA_*``). Composed into the worker's one Settings by streams/settings.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recstream.paths import default_home

Modality = Literal["text", "image", "audio"]


def _all_modalities() -> list[Modality]:
    return ["text", "image", "audio"]


class EncoderSettings(BaseSettings):
    """ONNX encoders. Env prefix ``RECSTREAM_ENCODER_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_ENCODER_", extra="ignore")

    # Where exported ONNX files live (never committed). Unset: ~/.cache/recstream/models.
    model_dir: Path = Field(default_factory=lambda: default_home() / "models")
    # auto: CUDA when a GPU is really usable, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=0, ge=0)  # threads per operator; 0: onnxruntime decides
    # Let idle onnxruntime threads busy-wait for work (lower latency on a dedicated machine,
    # wasted cores on a shared one).
    spin: bool = False
    max_tokens: int = Field(default=128, ge=8, le=512)  # text truncation, in tokens
    # Content micro-batch: up to batch_size items or batch_ms milliseconds, whichever first.
    batch_size: int = Field(default=32, ge=1)
    batch_ms: int = Field(default=20, ge=0)
    # Modalities encoded (a subset of text, image, audio); a video feeds image and audio.
    modalities: list[Modality] = Field(default_factory=_all_modalities)
    # minilm: all-MiniLM-L6-v2 (384-d, English); use: multilingual Universal Sentence Encoder
    # (512-d, 16 languages). Changing it changes the text vector space: re-encode the catalog.
    text_model: Literal["minilm", "use"] = "minilm"
    # CPU only: run the int8-quantised files where the export kept one (text, audio): about
    # 2.5x (text) and 4x (audio) cheaper, min cosine to fp32 0.976 / 0.995 on the parity set.
    int8: bool = False
    # CUDA only: run float16 copies of the models (made on first use, needs the onnx package).
    fp16: bool = True
    # Video: frames sampled per second of video time, at most video_max_frames of them.
    video_fps: float = Field(default=1.0, gt=0, le=30)
    video_max_frames: int = Field(default=16, ge=1, le=256)
    # Audio files and sound tracks are encoded up to this many seconds (2.32 s per model run).
    audio_max_seconds: float = Field(default=30.0, gt=0, le=600)

    def dims(self) -> dict[str, int]:
        """The size of each enabled modality's vectors (the models' output sizes)."""
        sizes = {"text": 512 if self.text_model == "use" else 384, "image": 1280, "audio": 512}
        return {m: sizes[m] for m in self.modalities}


class MediaSettings(BaseSettings):
    """Fetching media referenced by content items. Env prefix ``RECSTREAM_MEDIA_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_MEDIA_", extra="ignore")

    # Folders file:// URIs may point into (JSON list, e.g. '["/srv/media"]'); empty: no
    # local files at all.
    file_roots: list[Path] = Field(default_factory=list)
    # Largest medium fetched, in bytes (file or HTTP body).
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    # Largest decoded data: URI, in bytes.
    data_max_bytes: int = Field(default=1024 * 1024, ge=1)
    # Whole HTTP fetch, redirects included, and connection set-up, in seconds.
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=20)
    # Allow HTTP to loopback, private (RFC 1918, ULA), link-local and other non-global
    # addresses. Off: such hosts are refused (server-side request forgery guard).
    allow_private: bool = False
    # Networks allowed even when not global (JSON list of CIDRs, e.g. '["10.1.0.0/16"]').
    allow_networks: list[str] = Field(default_factory=list)
    # Media fetched at once per worker (HTTP connections and file reads).
    concurrency: int = Field(default=8, ge=1, le=256)
    user_agent: str = "recstream-media-fetcher/0.1"
