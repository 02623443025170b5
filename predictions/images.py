"""Image checks at upload and preprocessing for the model, both judged by the bytes alone."""

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Pillow's own bomb guard is a warning below 2x its limit; we check the pixel count ourselves.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(ValueError):
    """The upload is not an image we accept; the message says why, for the user."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def inspect_image(file: BinaryIO, *, max_pixels: int) -> ImageInfo:
    """Identify the image by its bytes and check it decodes, as cheaply as possible.

    JPEGs are decoded in draft mode (at 1/8 scale), which still reads every byte of the
    entropy-coded data, so a truncated file is caught without the cost of a full decode.
    """
    file.seek(0)
    try:
        with Image.open(file, formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels} pixels"
                )
            info = ImageInfo(format=image.format, width=width, height=height)
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(
            "file is not an image in an accepted format (" + ", ".join(ACCEPTED_FORMATS) + ")"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"image could not be decoded: {exc}") from None
    finally:
        file.seek(0)
    return info


def prepare_for_model(file: BinaryIO, *, size: int) -> np.ndarray:
    """Return the image as a (size, size, 3) uint8 RGB array, as ResNet50 expects it.

    Applies EXIF orientation, flattens transparency onto white, resizes the shorter side
    to `size` and crops the centre.
    """
    with Image.open(file, formats=ACCEPTED_FORMATS) as image:
        if image.format == "JPEG":
            # Decode at the smallest DCT scale that still leaves >= size pixels per side.
            image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image)
        image = _flatten_onto_white(image)
        width, height = image.size
        scale = size / min(width, height)
        resized = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(resized, Image.Resampling.BILINEAR, reducing_gap=3.0)
        left = (resized[0] - size) // 2
        top = (resized[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


def _flatten_onto_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def thumbnail_jpeg(file: BinaryIO, *, size: int) -> bytes:
    """A JPEG of the image, oriented and flattened, fitting in size x size pixels.

    Browsers show it whatever the stored format (TIFF, BMP, ...).
    """
    with Image.open(file, formats=ACCEPTED_FORMATS) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        image = _flatten_onto_white(ImageOps.exif_transpose(image))
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        return out.getvalue()
