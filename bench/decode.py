"""Decoding an upload into the model's input, by every candidate path side by side.

Each path turns the bytes of an image into the (size, size, 3) array the model takes: CPU
milliseconds per image (process time, so a decoder's own threads count) and how far its
array is from the plain full-size decode's, at each size of the benchmark's photos.
"""

import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from bench.images import MEGAPIXELS, PHOTOS_DIR, make_images
from common.images import ACCEPTED_FORMATS, model_input, prepare_for_model

# libvips' messages, one per operation at INFO, would be timed with its path.
logging.getLogger("pyvips").setLevel(logging.WARNING)
# Each path is timed for at least this much CPU time per group of images.
MIN_SECONDS = 1.0


def _opened(data: bytes) -> tuple[Image.Image, dict]:
    image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return image, {"original": image.size, "orientation": orientation}


def plain(data: bytes, size: int) -> np.ndarray:
    """Pillow, full-size decode, one bilinear resample: the reference."""
    image, geometry = _opened(data)
    return model_input(image.convert("RGB"), size=size, reducing_gap=None, **geometry)


def pillow_draft(data: bytes, size: int) -> np.ndarray:
    """Pillow with draft(): libjpeg-turbo decodes at a 1/2, 1/4 or 1/8 DCT scale."""
    image, geometry = _opened(data)
    image.draft("RGB", (size, size))
    return model_input(image.convert("RGB"), size=size, reducing_gap=None, **geometry)


def pillow_reduce(data: bytes, size: int) -> np.ndarray:
    """Pillow, full-size decode, then reduce() by an integer factor before resampling."""
    image, geometry = _opened(data)
    return model_input(image.convert("RGB"), size=size, reducing_gap=2.0, **geometry)


def simplejpeg_scaled(data: bytes, size: int) -> np.ndarray:
    """simplejpeg: libjpeg-turbo's TurboJPEG API at the smallest n/8 DCT scale."""
    import simplejpeg

    _, geometry = _opened(data)
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
    return model_input(Image.fromarray(pixels), size=size, reducing_gap=None, **geometry)


def pyvips_thumbnail(data: bytes, size: int) -> np.ndarray:
    """libvips' thumbnail: shrink-on-load, then its own resampling, crop and orientation."""
    import pyvips

    image = pyvips.Image.thumbnail_buffer(data, size, height=size, crop="centre")
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    return image.numpy()


def in_use(data: bytes, size: int) -> np.ndarray:
    """What the pipeline runs: common.images.prepare_for_model."""
    return prepare_for_model(io.BytesIO(data), size=size)


PATHS: dict[str, Callable[[bytes, int], np.ndarray]] = {
    "Pillow, full decode (reference)": plain,
    "Pillow draft()": pillow_draft,
    "Pillow reduce()": pillow_reduce,
    "simplejpeg, DCT scaling": simplejpeg_scaled,
    "pyvips thumbnail (shrink-on-load)": pyvips_thumbnail,
    "in use: prepare_for_model": in_use,
}


# The candidates not adopted need modules the project's requirements do not pin; without
# them the comparison says so.
MODULES = {simplejpeg_scaled: "simplejpeg", pyvips_thumbnail: "pyvips"}


def unavailable(path: Callable) -> str:
    """Why a path cannot run here, or "" when it can."""
    module = MODULES.get(path)
    if module is None:
        return ""
    try:
        __import__(module)
    except (ImportError, OSError) as exc:
        return f"{module} is not installed here ({exc})"
    return ""


def image_groups() -> dict[str, list[bytes]]:
    """The benchmark's photos as JPEG at each size, and as PNG at the middle size."""
    groups: dict[str, list[bytes]] = {}
    for name, data in make_images():
        megapixels = float(name.rsplit("-", 1)[1].removesuffix("mp.jpg"))
        groups.setdefault(f"JPEG {megapixels:g} MP", []).append(data)
    middle = f"{MEGAPIXELS[1]:g} MP"
    groups[f"PNG {middle}"] = [_as_png(data) for data in groups[f"JPEG {middle}"]]
    return groups


def _as_png(jpeg: bytes) -> bytes:
    out = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as image:
        image.save(out, "PNG")
    return out.getvalue()


def cpu_ms_per_image(path: Callable, images: list[bytes], size: int, min_seconds: float) -> float:
    """Median over rounds of the CPU time per image, after one warm-up round."""
    for data in images:
        path(data, size)
    rounds = []
    spent = 0.0
    while spent < min_seconds or len(rounds) < 3:
        started = time.process_time()
        for data in images:
            path(data, size)
        rounds.append(time.process_time() - started)
        spent += rounds[-1]
    return float(np.median(rounds)) * 1000 / len(images)


def measure_decoding(size: int, log=print, min_seconds: float = MIN_SECONDS) -> dict:
    """{"size", "groups": {group: {path: figures or {"skipped": why}}}}: CPU ms per image
    and the largest and mean absolute pixel difference from the reference path."""
    results: dict = {"size": size, "groups": {}}
    for group, images in image_groups().items():
        reference = [plain(data, size).astype(np.int16) for data in images]
        figures: dict = {}
        for name, path in PATHS.items():
            reason = unavailable(path)
            if not reason and group.startswith("PNG") and path is simplejpeg_scaled:
                reason = "decodes JPEG only"
            if reason:
                figures[name] = {"skipped": reason}
                continue
            differences = [
                np.abs(path(data, size).astype(np.int16) - expected)
                for data, expected in zip(images, reference, strict=True)
            ]
            figures[name] = {
                "cpu_ms": cpu_ms_per_image(path, images, size, min_seconds),
                "max_abs_difference": int(max(d.max() for d in differences)),
                "mean_abs_difference": float(np.mean([d.mean() for d in differences])),
            }
            log(f"  {group}, {name}: {figures[name]['cpu_ms']:.2f} ms")
        results["groups"][group] = figures
    return results


# --- Big images: what one decode of a large non-JPEG costs (docs/performance.md, "Big
# images"). Photo-like content is a test photo scaled up with some noise, as a camera's;
# flat content is one colour, what a decompression bomb holds.
BIG_MEGAPIXELS = (12, 25, 50)
BIG_ENCODINGS = {
    "JPEG": {"quality": 90},
    "WEBP": {"quality": 90},
    "WEBP lossless": {"lossless": True},
    "PNG": {},
    "TIFF deflate": {"compression": "tiff_adobe_deflate"},
}


def big_image(megapixels: float, content: str) -> Image.Image:
    side = round((megapixels * 1_000_000) ** 0.5)
    if content == "flat":
        return Image.new("RGBA", (side, side), (40, 120, 200, 255))
    with Image.open(PHOTOS_DIR / "bolete.jpg") as photo:
        picture = photo.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(-6, 7, size=(side, side, 3), dtype=np.int8)
    pixels = np.asarray(picture, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, encoding: str) -> bytes:
    out = io.BytesIO()
    if encoding == "JPEG" and image.mode == "RGBA":
        image = image.convert("RGB")
    image.save(out, encoding.split()[0], **BIG_ENCODINGS[encoding])
    return out.getvalue()


def _peak_rss_growth_mb(work: Callable[[], object]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS growth MB) of work(), in a forked child so that each decode
    starts from the same memory and frees all of it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        status = Path("/proc/self/status")
        # Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb(status, "VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = _status_kb(status, "VmHWM")
        os.write(write, f"{wall} {cpu} {(peak - before) / 1024}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        figures = answer.read()
    os.waitpid(pid, 0)
    wall, cpu, grown = map(float, figures.split())
    return wall, cpu, grown


def _status_kb(status: Path, field: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_big_decodes(size: int = 224, log=print) -> list[dict]:
    """Per format, size and content: the file's bytes, and the wall and CPU seconds and
    peak memory growth of the preprocessing's decode (prepare_for_model)."""
    rows = []
    for megapixels in BIG_MEGAPIXELS:
        for content in ("photo", "flat"):
            image = big_image(megapixels, content)
            for encoding in BIG_ENCODINGS:
                if encoding == "WEBP lossless" and content == "photo":
                    continue  # minutes to encode, and megabytes a megapixel: never a bomb
                data = encoded(image, encoding)
                wall, cpu, grown = _peak_rss_growth_mb(
                    lambda data=data: prepare_for_model(io.BytesIO(data), size=size)
                )
                row = {
                    "format": encoding,
                    "megapixels": megapixels,
                    "content": content,
                    "bytes": len(data),
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "peak_mb": round(grown),
                }
                log(row)
                rows.append(row)
            del image
    return rows


if __name__ == "__main__":
    measure_big_decodes()
