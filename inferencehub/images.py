"""Image checks at upload and preprocessing for the model, both judged by the bytes alone."""

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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
    """Identify the image by its bytes and check it is whole, as cheaply as possible.

    JPEG and PNG, nearly every upload, are checked without decoding their pixels (which
    the Celery preprocessing does anyway; decoding here too cost the web process 28 % of
    its CPU in the benchmark's profile): a JPEG must end its scan data with an EOI marker,
    a PNG's chunks must all be there with good checksums. A file damaged inside its
    compressed data passes, and its job fails at preprocessing with the decoder's reason.
    Other formats are decoded.
    """
    file.seek(0)
    try:
        with Image.open(file, formats=ACCEPTED_FORMATS) as image:
            # Opening a JPEG reads its headers up to the first scan's data and stops.
            scan_start = file.tell()
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels} pixels"
                )
            info = ImageInfo(format=image.format, width=width, height=height)
            if image.format == "JPEG":
                _check_jpeg_ends(file, scan_start=scan_start)
            elif image.format == "PNG":
                image.verify()
            else:
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


JPEG_END_OF_IMAGE = b"\xff\xd9"


def _check_jpeg_ends(file: BinaryIO, *, scan_start: int) -> None:
    """Raise if no EOI marker follows the start of the scan data: the file was cut short.

    Inside scan data every 0xFF byte is followed by 0x00 or a restart marker, so an EOI
    found there is the real end; one before the scan may belong to an EXIF thumbnail.
    Searched backwards from the end in chunks, since the EOI is nearly always last.
    """
    chunk = 64 * 1024
    end = file.seek(0, io.SEEK_END)
    file.seek(max(scan_start, end - len(JPEG_END_OF_IMAGE)))
    if file.read() == JPEG_END_OF_IMAGE:
        return
    while end > scan_start:
        start = max(scan_start, end - chunk)
        file.seek(start)
        # One byte more, so a marker split across two chunks is still seen.
        if JPEG_END_OF_IMAGE in file.read(end - start + 1):
            return
        end = start
    raise ImageRejected("image could not be decoded: the JPEG data is truncated")


def prepare_for_model(file: BinaryIO, *, size: int) -> np.ndarray:
    """Return the image as a (size, size, 3) uint8 RGB array, as ResNet50 expects it.

    Applies EXIF orientation, flattens transparency onto white and takes the centre square,
    resampled to size x size. A JPEG is decoded at a reduced DCT scale: the fastest path
    measured, within a stated bound of a full-size decode (docs/performance.md, "Decoding").
    """
    with Image.open(file, formats=ACCEPTED_FORMATS) as image:
        original = image.size
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if image.format == "JPEG":
            # libjpeg-turbo decodes at the smallest DCT scale (1/2, 1/4, 1/8) that leaves
            # at least size pixels per side.
            image.draft("RGB", (size, size))
        decoded = _flatten_onto_white(image)
        return model_input(decoded, original=original, size=size, orientation=orientation)


# Pillow first shrinks by an integer factor (box filter) while the remaining scale stays
# above this, then resamples: the speed of reduce() with a result close to a plain resize.
REDUCING_GAP = 3.0


def model_input(
    decoded: Image.Image,
    *,
    original: tuple[int, int],
    size: int,
    orientation: int = 1,
    reducing_gap: float | None = REDUCING_GAP,
) -> np.ndarray:
    """The centre square of an image of `original` size, resampled bilinearly to size x
    size from `decoded`: that image in RGB at full size or at n/8 of it (JPEG DCT
    scaling), still in its stored orientation; then turned as EXIF `orientation` says.

    The square is taken in the stored orientation, and the small result turned: the centre
    square of a turned image is the turned centre square.
    """
    width, height = original
    # A DCT-scaled decode is ceil(width * n / 8) wide, so this recovers n exactly.
    scale = Fraction(8 * decoded.width // width, 8)
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left * scale, top * scale, (left + side) * scale, (top + side) * scale)
    square = decoded.resize(
        (size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=reducing_gap
    )
    method = EXIF_ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        square = square.transpose(method)
    return np.asarray(square, dtype=np.uint8)


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
EXIF_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _flatten_onto_white(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        # convert() clips 16-bit values at 255, a white image: keep each value's high byte.
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
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
