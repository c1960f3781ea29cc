"""Encoder throughput: items per second per modality at batch 1, 8 and 32.

    python -m recstream.bench.encoders [--report OUT.json] [--seconds 3] [--batches 1 8 32]
                                  [--device cpu|cuda|all] [--modalities text image audio video]
                                  [--use] [--threads N] [--spin off|on|both]

For each modality and model variant (fp32 always; int8 on CPU where the export kept one;
fp16 on CUDA), batches of real inputs are encoded back to back for ``--seconds``; reported:
items/s (wall clock), CPU ms per item (process CPU time / items: every thread, so on 2 cores it
can exceed wall time per item), and the median batch latency. "all" devices: CPU, then CUDA
when a GPU really runs the session (``session.get_providers()``).

Inputs: text = the bundled catalog's item texts (title. description. tags), image = JPEG
bytes of the scikit-image sample photos (decode + resize + crop + model: what an item costs;
``image-model`` is the model alone on preprocessed pixels), audio = 2.32 s blocks of speech
(espeak-ng) or, without it, of synthetic sounds (``audio`` = model on log-mel blocks; the
front end is reported separately as ``audio-frontend``), video = a 10 s 320x240 MP4 with sound,
sampled at the default 1 fps (decode + frames + sound track + both models).

``--spin both`` measures every model with onnxruntime's idle pool threads busy-waiting
(``RECSTREAM_ENCODER_SPIN=true``) and without (the default): spinning trades CPU for latency, and
on a shared 2-core machine the spinning threads take cores from everything else.

The machine is printed and recorded (CPU model, cores, load average before and after: on a
shared machine other work skews the figures; CPU ms per item is the steadier number).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstream.encoders.audio import AudioEncoder, blocks, decode_audio, log_mel
from recstream.encoders.image import ImageEncoder, preprocess
from recstream.encoders.model_cache import INT8_FILE, model_dir
from recstream.encoders.runtime import CUDA, wants_cuda
from recstream.encoders.text import TextEncoder, item_text

TARGETS = {"text": 400, "image": 150, "audio": 60}  # items (blocks) per second, 2-core CPU


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
        proc = subprocess.run(q, capture_output=True, text=True, timeout=20)
        gpu = proc.stdout.strip() or None
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def measure(
    fn: Callable[[Sequence[Any]], Any], inputs: Sequence[Any], batch: int, seconds: float
) -> dict[str, float]:
    """Run ``fn`` on consecutive batches of ``inputs`` for ``seconds``; the figures."""
    pool = list(inputs) * (batch // max(len(inputs), 1) + 2)
    fn(pool[:batch])  # warm-up: first-run allocations and kernel choice
    latencies: list[float] = []
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    i = 0
    while time.perf_counter() - wall0 < seconds or len(latencies) < 3:
        chunk = pool[i % len(inputs) : i % len(inputs) + batch]
        t = time.perf_counter()
        fn(chunk)
        latencies.append(time.perf_counter() - t)
        done += len(chunk)
        i += batch
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "items_per_s": round(done / wall, 1),
        "cpu_ms_per_item": round(1000 * cpu / done, 3),
        "batch_p50_ms": round(1000 * statistics.median(latencies), 2),
        "items": done,
    }


# -- inputs ----------------------------------------------------------------------------------


def catalog_texts() -> list[str]:
    path = Path(__file__).resolve().parent.parent / "streams" / "data" / "catalog.jsonl"
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            texts.append(item_text(item.get("title"), item.get("description"), item.get("tags")))
    return texts


def photos_jpeg() -> tuple[list[bytes], str]:
    from PIL import Image

    arrays: list[np.ndarray] = []
    source = "scikit-image sample photos"
    try:
        import skimage.data as data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"):
            arrays.append(np.ascontiguousarray(np.asarray(getattr(data, name)())[:, :, :3]))
    except ImportError:
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
        source = "synthetic 640x480 noise (scikit-image not installed)"
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, source


def speech_clips(tmp: Path) -> tuple[list[np.ndarray], str]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        from recstream.encoders.export.media import reference_sounds

        return reference_sounds(), "synthetic reference sounds (espeak-ng not installed)"
    lines = [
        "The committee will meet again next week to review the budget proposal in detail.",
        "Turn left at the second traffic light and the museum is on your right.",
        "Rain is expected across the north this evening, clearing by tomorrow morning.",
    ]
    clips = []
    for i, line in enumerate(lines):
        wav = tmp / f"s{i}.wav"
        subprocess.run([espeak, "-w", str(wav), line], check=True, timeout=60)
        samples = decode_audio(wav.read_bytes())
        assert samples is not None
        clips.append(samples)
    return clips, "espeak-ng speech"


def video_file(tmp: Path, photo: bytes, sound: np.ndarray) -> bytes:
    import av
    from PIL import Image

    frame = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB").resize((320, 240)))
    path = tmp / "bench.mp4"
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
        a = c.add_stream("aac", rate=44100)
        for i in range(250):
            shifted = np.roll(frame, i, axis=1)  # some motion, so frames differ
            for p in v.encode(av.VideoFrame.from_ndarray(shifted, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        track = np.resize(sound, 441000).astype(np.float32)
        for i in range(0, len(track), 1024):
            f = av.AudioFrame.from_ndarray(track[None, i : i + 1024], format="flt", layout="mono")
            f.sample_rate = 44100
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path.read_bytes()


# -- runs ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = model_dir(args.model_dir)
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and wants_cuda("auto"):
        devices.append("cuda")
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="recstream-bench-"))
    texts = catalog_texts()
    jpegs, photo_source = photos_jpeg()
    clips, sound_source = speech_clips(tmp)
    mel = np.concatenate([blocks(log_mel(c)) for c in clips])
    sources = {"text": "bundled catalog item texts", "image": photo_source, "audio": sound_source}

    spin = False

    def record(
        modality: str, variant: str, device: str, provider: str, batch: int, m: dict
    ) -> None:
        row: dict[str, Any] = {
            "modality": modality,
            "variant": variant,
            "device": device,
            "provider": provider,
        }
        row.update(batch=batch, spin=spin, **m)
        results.append(row)
        print(
            f"{modality:15s} {variant:5s} {provider[:4]:5s} {'spin' if spin else '':4s} "
            f"b={batch:<3d} "
            f"{m['items_per_s']:8.1f} items/s  {m['cpu_ms_per_item']:8.2f} CPU ms/item  "
            f"batch p50 {m['batch_p50_ms']:8.1f} ms",
            flush=True,
        )

    spins = {"off": [False], "on": [True], "both": [False, True]}[args.spin]
    for device in devices:
        variants = ["fp32", "int8"] if device == "cpu" else ["fp16", "fp32"]
        for variant, spin in itertools.product(variants, spins):  # ``record`` reads ``spin``
            opts = {
                "device": device,
                "intra_op_threads": args.threads,
                "spin": spin,
                "int8": variant == "int8",
                "fp16": variant == "fp16",
            }
            if "text" in args.modalities:
                enc = TextEncoder(root, **opts)
                if enc.variant == variant or variant == "fp32":
                    for b in args.batches:
                        record(
                            "text",
                            enc.variant,
                            device,
                            enc.provider,
                            b,
                            measure(enc.encode, texts, b, args.seconds),
                        )
            # int8 image only where the export kept a file (its parity gate).
            image_int8 = (root / "image-effnet-lite0" / INT8_FILE).is_file()
            if "image" in args.modalities and (variant != "int8" or image_int8):
                img = ImageEncoder(root, **opts)
                if img.variant == variant or variant == "fp32":
                    pixels = [preprocess(j) for j in jpegs]

                    def model_only(x: Sequence[Any], img: ImageEncoder = img) -> np.ndarray:
                        return img.encode_pixels(np.stack(x))

                    for b in args.batches:
                        record(
                            "image",
                            img.variant,
                            device,
                            img.provider,
                            b,
                            measure(img.encode, jpegs, b, args.seconds),
                        )
                        record(
                            "image-model",
                            img.variant,
                            device,
                            img.provider,
                            b,
                            measure(model_only, pixels, b, args.seconds),
                        )
            if "audio" in args.modalities:
                au = AudioEncoder(root, **opts)
                if au.variant == variant or variant == "fp32" or variant == "fp16":

                    def blocks_only(x: Sequence[Any], au: AudioEncoder = au) -> np.ndarray:
                        return au.block_embeddings(np.stack(x))

                    for b in args.batches:
                        record(
                            "audio",
                            au.variant,
                            device,
                            au.provider,
                            b,
                            measure(blocks_only, list(mel), b, args.seconds),
                        )
            if "video" in args.modalities and variant in ("fp32", "fp16"):
                _video(args, root, opts, jpegs, clips, tmp, record, device)
        spin = False
        if "audio" in args.modalities and device == "cpu":
            one_block = [c[: int(44100 * 2.32)] for c in clips]
            record(
                "audio-frontend",
                "numpy",
                "cpu",
                "numpy",
                1,
                measure(lambda x: [log_mel(c) for c in x], one_block, 1, args.seconds),
            )
        if args.use and device == "cpu":
            from recstream.encoders.text_use import UseTextEncoder

            use = UseTextEncoder(root, device="cpu", intra_op_threads=args.threads)
            for b in args.batches:
                record(
                    "text-use",
                    "int8",
                    "cpu",
                    use.provider,
                    b,
                    measure(use.encode, texts, b, args.seconds),
                )
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "results": results,
        "inputs": sources,
        "int8_files": {
            m: (root / d / INT8_FILE).is_file()
            for m, d in (
                ("text", "text-minilm"),
                ("image", "image-effnet-lite0"),
                ("audio", "audio-aisfx"),
            )
        },
    }


def _video(args, root, opts, jpegs, clips, tmp, record, device) -> None:  # noqa: ANN001
    import asyncio
    import base64
    from types import SimpleNamespace

    from recstream.encoders.pipeline import ContentEncoder
    from recstream.streams.settings import EncoderSettings, MediaSettings

    data = video_file(tmp, jpegs[0], clips[0])
    uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
    enc = ContentEncoder.from_settings(
        EncoderSettings(
            model_dir=root,
            device=device,
            intra_op_threads=args.threads,
            fp16=opts["fp16"],
            spin=opts["spin"],
            modalities=["image", "audio"],
        ),
        MediaSettings(data_max_bytes=len(data) + 1),
    )
    item = SimpleNamespace(
        title=None, description=None, tags=None, image_uri=None, audio_uri=None, video_uri=uri
    )
    for b in (1, 8):
        m = measure(lambda x: asyncio.run(enc.encode(x)), [item], b, args.seconds)
        record(
            "video-10s",
            enc.image.variant if enc.image else "?",
            device,
            enc.image.provider if enc.image else "?",
            b,
            m,
        )
    enc.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recstream.bench.encoders", description=__doc__)
    p.add_argument("--report", type=Path, help="write the figures as JSON here")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--modalities", nargs="+", default=["text", "image", "audio", "video"])
    p.add_argument("--use", action="store_true", help="also the multilingual USE text model")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime)")
    p.add_argument(
        "--spin",
        choices=["off", "on", "both"],
        default="off",
        help="busy-waiting onnxruntime pool threads (default off, as the worker)",
    )
    p.add_argument("--model-dir", type=Path, default=None)
    args = p.parse_args(argv)

    info = machine()
    load_before = os.getloadavg()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, GPU {info['gpu']}; "
        f"load average {load_before[0]:.2f}",
        flush=True,
    )
    out = run(args)
    load_after = os.getloadavg()
    report = {
        "machine": info,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "targets_items_per_s_cpu": TARGETS,
        "seconds_per_measurement": args.seconds,
        "intra_op_threads": args.threads,
        "cuda_measured": any(r["provider"] == CUDA for r in out["results"]),
        **out,
    }
    print(f"load average after: {load_after[0]:.2f}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
