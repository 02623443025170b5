"""The benchmark's images: the real test photos re-encoded as JPEG at several sizes."""

import io
from pathlib import Path

from PIL import Image

PHOTOS_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
PHOTOS = ("bolete.jpg", "fox.png", "toaster.png")
# A phone thumbnail, a typical web photo and a modern phone camera's full size.
MEGAPIXELS = (0.3, 2.0, 12.0)


def make_images(megapixels: tuple[float, ...] = MEGAPIXELS) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) for every photo at every size, smallest first."""
    images = []
    for size in megapixels:
        for photo in PHOTOS:
            with Image.open(PHOTOS_DIR / photo) as original:
                rgba = original.convert("RGBA")
            # Flatten transparency onto white, as the pipeline does, since JPEG has none.
            picture = Image.new("RGB", rgba.size, (255, 255, 255))
            picture.paste(rgba, mask=rgba.getchannel("A"))
            scale = (size * 1_000_000 / (picture.width * picture.height)) ** 0.5
            picture = picture.resize(
                (round(picture.width * scale), round(picture.height * scale)),
                Image.Resampling.LANCZOS,
            )
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=90)
            images.append((f"{Path(photo).stem}-{size:g}mp.jpg", buffer.getvalue()))
    return images
