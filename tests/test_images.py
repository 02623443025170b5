"""Preprocessing for the model (common.images.prepare_for_model): every accepted kind
of image decodes right, and the fast JPEG path stays within a stated bound of a full-size
decode (docs/performance.md, "Decoding")."""

import io

import numpy as np
import pytest
from PIL import Image

from bench.decode import PATHS, measure_decoding, plain
from bench.images import make_images
from bench.report import decoding_lines
from common.images import prepare_for_model

SIZE = 224
# The fast path (DCT-scaled decode) against a full-size decode of the same JPEG, for each
# of the benchmark's photos at 0.3, 2 and 12 MP: measured mean absolute difference
# 0.36-2.12 and largest 7-31 (of 255); the bound leaves room for another libjpeg-turbo.
MEAN_ABS_DIFFERENCE_BOUND = 3.0
MAX_ABS_DIFFERENCE_BOUND = 48


def encoded(image: Image.Image, format: str, **options) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    buffer.seek(0)
    return buffer


def quadrants(width: int = 400, height: int = 300) -> Image.Image:
    """Red top left, green top right, blue bottom left, white bottom right."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    pixels[: height // 2, width // 2 :] = (0, 255, 0)
    pixels[height // 2 :, : width // 2] = (0, 0, 255)
    pixels[height // 2 :, width // 2 :] = (255, 255, 255)
    return Image.fromarray(pixels)


def corners(array: np.ndarray) -> list[tuple[int, ...]]:
    """The colour near each corner, clockwise from the top left, rounded to 0 or 255."""
    inset = array.shape[0] // 8
    points = [(inset, inset), (inset, -inset), (-inset, -inset), (-inset, inset)]
    return [tuple(int(v > 127) * 255 for v in array[y, x]) for y, x in points]


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def test_fast_jpeg_path_stays_within_the_bound_of_a_full_decode():
    for name, data in make_images():
        fast = prepare_for_model(io.BytesIO(data), size=SIZE).astype(np.int16)
        difference = np.abs(fast - plain(data, SIZE).astype(np.int16))
        assert difference.mean() <= MEAN_ABS_DIFFERENCE_BOUND, name
        assert difference.max() <= MAX_ABS_DIFFERENCE_BOUND, name


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (1, [RED, GREEN, WHITE, BLUE]),
        (3, [WHITE, BLUE, RED, GREEN]),
        (6, [BLUE, RED, GREEN, WHITE]),  # stored turned left: shown turned right
        (8, [GREEN, WHITE, BLUE, RED]),
    ],
)
def test_exif_orientation_is_applied(orientation, expected):
    exif = Image.Exif()
    exif[0x0112] = orientation
    file = encoded(quadrants(1600, 1200), "JPEG", quality=95, exif=exif.tobytes())
    assert corners(prepare_for_model(file, size=SIZE)) == expected


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_accepted_format_gives_the_model_its_array(format):
    options = {"quality": 95} if format in ("JPEG", "WEBP") else {}
    array = prepare_for_model(encoded(quadrants(), format, **options), size=SIZE)
    assert (array.shape, array.dtype) == ((SIZE, SIZE, 3), np.uint8)
    assert corners(array) == [RED, GREEN, WHITE, BLUE]


def test_cmyk_jpeg_decodes_to_its_colours():
    file = encoded(quadrants(800, 600).convert("CMYK"), "JPEG", quality=95)
    assert corners(prepare_for_model(file, size=SIZE)) == [RED, GREEN, WHITE, BLUE]


def test_greyscale_jpeg_becomes_three_equal_channels():
    grey = Image.fromarray(np.tile(np.linspace(0, 255, 800).astype(np.uint8), (600, 1)))
    array = prepare_for_model(encoded(grey, "JPEG", quality=95), size=SIZE)
    assert array.shape == (SIZE, SIZE, 3)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert array[0, 0, 0] < array[0, -1, 0]  # dark on the left, light on the right


def test_png_transparency_is_flattened_onto_white():
    image = quadrants().convert("RGBA")
    pixels = np.asarray(image).copy()
    pixels[:150, :200, 3] = 0  # the red quadrant fully transparent
    array = prepare_for_model(encoded(Image.fromarray(pixels), "PNG"), size=SIZE)
    assert corners(array) == [WHITE, GREEN, WHITE, BLUE]


def test_palette_png_with_a_transparent_colour_is_flattened_onto_white():
    image = quadrants().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    red_index = image.getpixel((0, 0))
    file = encoded(image, "PNG", transparency=red_index)
    assert corners(prepare_for_model(file, size=SIZE)) == [WHITE, GREEN, WHITE, BLUE]


def test_sixteen_bit_greyscale_png_keeps_its_levels():
    levels = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    array = prepare_for_model(encoded(image, "PNG"), size=SIZE)
    # Dark to light across the image, not clipped to white.
    assert array[SIZE // 2, 2, 0] < 40 and array[SIZE // 2, -3, 0] > 215
    assert 100 < array[SIZE // 2, SIZE // 2, 0] < 155


@pytest.mark.slow
def test_decode_comparison_times_every_path_and_its_difference_from_a_full_decode():
    results = measure_decoding(SIZE, log=lambda line: None, min_seconds=0)
    assert set(results["groups"]) == {"JPEG 0.3 MP", "JPEG 2 MP", "JPEG 12 MP", "PNG 2 MP"}
    for group, paths in results["groups"].items():
        assert set(paths) == set(PATHS), group
        reference = paths["Pillow, full decode (reference)"]
        assert (reference["max_abs_difference"], reference["mean_abs_difference"]) == (0, 0)
        for name, figures in paths.items():
            assert figures.get("cpu_ms", 0) > 0 or "skipped" in figures, (group, name)
    table = "\n".join(decoding_lines({"decoding": results}))
    assert "| in use: prepare_for_model |" in table and "PNG 2 MP" in table


@pytest.mark.parametrize(("width", "height"), [(640, 480), (4000, 3000), (300, 200)])
def test_a_jpegs_largest_thumbnail_is_full_size_whatever_its_dct_scale(width, height):
    import io

    from PIL import Image

    from common.images import prepare_upload

    photo = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 60)).save(photo, "JPEG")
    photo.seek(0)
    prepared = prepare_upload(photo, size=224, thumbnail_sizes=(96, 480))
    with Image.open(io.BytesIO(prepared.thumbnails[480])) as thumb:
        assert max(thumb.size) == min(480, max(width, height))
    assert prepared.model_input.shape == (224, 224, 3)
