"""Image checks at upload and preprocessing for the model, both judged by the bytes alone."""

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

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


@dataclass(frozen=True)
class PixelLimits:
    """How many pixels an upload may claim, so that decoding it stays within a bound
    (the values and why: common/limits.py)."""

    # A JPEG is decoded at a reduced DCT scale (1/8 for big ones), so it may be larger.
    jpeg: int
    # Every other format is decoded whole.
    decoded_whole: int
    # Above this many pixels a file must hold at least min_bytes_per_megapixel bytes per
    # million pixels: fewer is a decompression bomb's ratio, not a picture's.
    ratio_checked_above: int
    min_bytes_per_megapixel: int

    def for_format(self, format: str) -> int:
        return self.jpeg if format == "JPEG" else self.decoded_whole


def inspect_image(file: BinaryIO, *, limits: PixelLimits) -> ImageInfo:
    """Identify the image by its headers and check it is whole, never decoding its pixels.

    The size and format come from the headers; the pixel count is checked against the
    format's limit and against the file's length (limits). Then the file must be whole as
    far as its structure tells without decoding: a JPEG must end its scan data with an EOI
    marker, a PNG's chunks must all be there with good checksums, a WebP's RIFF length, a
    GIF's trailer, a BMP's declared size and a TIFF's strips must fit the file. A file
    damaged inside its compressed data passes, and its job fails at preprocessing with the
    decoder's reason. Decoding here cost the web process 28 % of its CPU in the
    benchmark's profile, and a 2 KB WebP of 50 megapixels 572 MB of its memory.
    """
    file.seek(0)
    try:
        length = file.seek(0, io.SEEK_END)
        file.seek(0)
        with Image.open(file, formats=ACCEPTED_FORMATS) as image:
            # Opening reads the headers and stops (for a JPEG, at its first scan's data).
            scan_start = file.tell()
            width, height = image.size
            info = ImageInfo(format=image.format, width=width, height=height)
            _check_pixels(info, length=length, limits=limits)
            if image.format == "JPEG":
                _check_jpeg_ends(file, scan_start=scan_start)
            elif image.format == "PNG":
                image.verify()
            else:
                _check_structure(image, file, length=length)
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


def _check_pixels(info: ImageInfo, *, length: int, limits: PixelLimits) -> None:
    pixels = info.width * info.height
    limit = limits.for_format(info.format)
    if pixels > limit:
        which = "" if info.format == "JPEG" else f" for {info.format}"
        raise ImageRejected(
            f"image is {info.width}x{info.height} = {pixels} pixels; "
            f"the limit{which} is {limit} pixels (JPEG: {limits.jpeg})"
        )
    if pixels > limits.ratio_checked_above:
        needed = pixels * limits.min_bytes_per_megapixel // 1_000_000
        if length < needed:
            raise ImageRejected(
                f"image claims {info.width}x{info.height} = {pixels} pixels in only "
                f"{length} bytes, a decompression bomb's ratio: above "
                f"{limits.ratio_checked_above} pixels an image needs at least "
                f"{limits.min_bytes_per_megapixel} bytes per million pixels ({needed} here)"
            )


# TIFF tags: where each strip (or tile) of the pixel data starts, and its length.
TIFF_DATA_TAGS = ((273, 279), (324, 325))


def _check_structure(image: Image.Image, file: BinaryIO, *, length: int) -> None:
    """Raise if the headers of a WebP, GIF, BMP or TIFF say the file is longer than it is."""
    truncated = ImageRejected(f"image could not be decoded: the {image.format} data is truncated")
    if image.format == "WEBP":
        file.seek(4)
        # The RIFF header's length counts every byte after its first 8.
        if 8 + int.from_bytes(file.read(4), "little") > length:
            raise truncated
    elif image.format == "GIF":
        file.seek(length - 1)
        if file.read(1) != b";":  # the trailer that ends every GIF
            raise truncated
    elif image.format == "BMP":
        file.seek(2)
        if int.from_bytes(file.read(4), "little") > length:  # 0 when the writer left it out
            raise truncated
    elif image.format == "TIFF":
        tags = image.tag_v2
        for offsets_tag, counts_tag in TIFF_DATA_TAGS:
            offsets, counts = tags.get(offsets_tag, ()), tags.get(counts_tag, ())
            if isinstance(offsets, int):
                offsets, counts = (offsets,), (counts,)
            if any(start + count > length for start, count in zip(offsets, counts, strict=False)):
                raise truncated


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


@dataclass(frozen=True)
class Fit:
    """How an image is brought to the model's size x size: its short side resized to
    resize_to (None: to size, the whole centre square) and the centre size x size cut out,
    or the whole image stretched to size x size. A model's input spec says which
    (serving/onnx.py); the default is what ResNet50 and the Keras models take."""

    resize_to: int | None = None
    stretch: bool = False

    @classmethod
    def from_spec(cls, spec: dict) -> "Fit":
        """From an input spec as the registry and a package's manifest keep it ({} for
        models without one)."""
        return cls(resize_to=spec.get("resize_to"), stretch=spec.get("resize") == "stretch")

    def box(self, width: int, height: int, size: int) -> tuple[float, float, float, float]:
        """The part of a width x height image that becomes the size x size input."""
        if self.stretch:
            return (0, 0, width, height)
        side = min(width, height) * size / max(size, self.resize_to or size)
        left, top = (width - side) / 2, (height - side) / 2
        return (left, top, left + side, top + side)

    def decoded_side(self, size: int) -> int:
        """The fewest pixels the short side may be decoded at for the input to have size."""
        return max(size, self.resize_to or size)


# Today's fit, the default: the whole centre square.
CENTRE_SQUARE = Fit()


def prepare_for_model(file: BinaryIO, *, size: int, fit: Fit = CENTRE_SQUARE) -> np.ndarray:
    """Return the image as a (size, size, 3) uint8 RGB array, brought to size as fit says."""
    return prepare_upload(file, size=size, fit=fit).model_input


@dataclass(frozen=True)
class Prepared:
    model_input: np.ndarray
    # JPEG bytes by the size of the square each fits in.
    thumbnails: dict[int, bytes]


def prepare_upload(
    file: BinaryIO, *, size: int, thumbnail_sizes: tuple[int, ...] = (), fit: Fit = CENTRE_SQUARE
) -> Prepared:
    """The model's (size, size, 3) uint8 RGB array, and thumbnails, from one decode.

    Applies EXIF orientation, flattens transparency onto white and takes the part fit says
    (by default the centre square), resampled to size x size. A JPEG is decoded at a
    reduced DCT scale: the fastest path measured, within a stated bound of a full-size
    decode (docs/performance.md, "Decoding").
    The thumbnails are made from the same decode, which a JPEG's DCT scale keeps large
    enough for the largest of them (a 12 MP photo still decodes at 1/8, 500x375).
    """
    with Image.open(file, formats=ACCEPTED_FORMATS) as image:
        original = image.size
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if image.format == "JPEG":
            # libjpeg-turbo decodes at the smallest DCT scale (1/2, 1/4, 1/8) that leaves
            # at least this many pixels per side.
            needed = fit.decoded_side(size)
            image.draft("RGB", draft_size(original, needed, max(thumbnail_sizes, default=0)))
        decoded = _flatten_onto_white(image)
        return Prepared(
            model_input=model_input(
                decoded, original=original, size=size, orientation=orientation, fit=fit
            ),
            thumbnails=_thumbnails(decoded, thumbnail_sizes, orientation=orientation),
        )


def draft_size(original: tuple[int, int], size: int, thumbnail: int) -> tuple[int, int]:
    """The least decoded size that gives the model `size` pixels per side and the largest
    thumbnail its longer side (`thumbnail`, or the original's when smaller)."""
    width, height = original
    longest = max(width, height)
    wanted = min(thumbnail, longest)
    return (
        max(size, math.ceil(wanted * width / longest)),
        max(size, math.ceil(wanted * height / longest)),
    )


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
    fit: Fit = CENTRE_SQUARE,
) -> np.ndarray:
    """The part of an image of `original` size that fit says (by default its centre
    square), resampled bilinearly to size x size from `decoded`: that image in RGB at full
    size or at n/8 of it (JPEG DCT scaling), still in its stored orientation; then turned
    as EXIF `orientation` says.

    The part is taken in the stored orientation, and the small result turned: the centre
    square of a turned image is the turned centre square.
    """
    width, height = original
    # A DCT-scaled decode is ceil(width * n / 8) wide, so this recovers n exactly.
    scale = Fraction(8 * decoded.width // width, 8)
    box = tuple(edge * scale for edge in fit.box(width, height, size))
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
        # Pasted through its own alpha onto an RGB white: one RGB copy, where compositing
        # onto an RGBA white took three (a 50 MP image's peak 955 MB, docs/performance.md).
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba)
        return flat
    return image.convert("RGB")


def thumbnail_jpeg(file: BinaryIO, *, size: int) -> bytes:
    """A JPEG of the image, oriented and flattened, fitting in size x size pixels.

    Browsers show it whatever the stored format (TIFF, BMP, ...).
    """
    with Image.open(file, formats=ACCEPTED_FORMATS) as image:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        return _thumbnails(_flatten_onto_white(image), (size,), orientation=orientation)[size]


def _thumbnails(decoded: Image.Image, sizes: tuple[int, ...], *, orientation: int) -> dict:
    """JPEGs of the decoded image fitting in each size's square (never enlarged), turned as
    EXIF orientation says; each smaller one is made from the one before."""
    thumbnails = {}
    source = decoded
    for size in sorted(sizes, reverse=True):
        scale = min(1.0, size / max(source.size))
        if scale < 1.0:
            fitted = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
            source = source.resize(fitted, Image.Resampling.BICUBIC, reducing_gap=2.0)
        method = EXIF_ORIENTATION_TRANSPOSE.get(orientation)
        shown = source if method is None else source.transpose(method)
        out = io.BytesIO()
        shown.save(out, "JPEG", quality=85)
        thumbnails[size] = out.getvalue()
    return thumbnails
