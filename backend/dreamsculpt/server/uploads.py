"""Reference images as uploaded (POST /images) or given on the command line: decoded, checked
and turned into one canonical PNG, so that the server and the CLI accept the same pictures and
hand the engine the same pixels.

Only PNG, JPEG and WebP are opened (Pillow is never asked to guess among its other formats);
the size is checked from the header before any pixel is decoded; the EXIF orientation is
applied; an alpha channel is kept unless it is fully opaque.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from ..errors import DreamsculptError

#: Content-Type -> Pillow format.
MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
#: Accepted width and height, pixels (inclusive).
SIDE_RANGE = (32, 4096)


@dataclass(frozen=True)
class DecodedImage:
    png: bytes          # the canonical PNG: RGB, or RGBA when the picture has transparency
    width: int
    height: int
    has_alpha: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()


def decode_image(data: bytes, name: str = "The image") -> DecodedImage:
    """`data` (a PNG, JPEG or WebP file) as a canonical PNG, or a DreamsculptError that says
    what is wrong with it. `name` starts the messages (e.g. the file's path)."""
    from PIL import Image, ImageOps

    low, high = SIDE_RANGE
    try:
        image = Image.open(io.BytesIO(data), formats=list(MEDIA_TYPES.values()))
    except Exception as exc:  # noqa: BLE001 - whatever Pillow trips on, it is not an image we can use
        raise DreamsculptError(f"{name} is not a PNG, JPEG or WebP image{_reason(exc)}. Save it as PNG "
                               "(with alpha for the object's mask) and try again.") from None
    width, height = image.size
    if not (low <= width <= high and low <= height <= high):
        raise DreamsculptError(f"{name} is {width}x{height} pixels; use one between {low} and {high} pixels "
                               "on each side.")
    try:
        image = ImageOps.exif_transpose(image)   # decodes the pixels too
        image = _to_rgb_or_rgba(image)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise DreamsculptError(f"{name} could not be decoded{_reason(exc)}; it may be truncated or "
                               "corrupt. Save it again as PNG and try again.") from None
    # A fresh image: no metadata (EXIF, ICC, text chunks) goes into the PNG, so the same
    # pixels always give the same bytes and the same id.
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, "PNG")
    return DecodedImage(buffer.getvalue(), clean.width, clean.height, clean.mode == "RGBA")


def decode_depth(data: bytes, name: str = "The depth image") -> DecodedImage:
    """`data` (a 16-bit grey PNG: view depth in millimetres, 0 where there is none, as a
    scene walk's start depth) kept 16-bit, or a DreamsculptError that says what is wrong."""
    from PIL import Image

    low, high = SIDE_RANGE
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    except Exception as exc:  # noqa: BLE001 - whatever Pillow trips on, it is not a depth PNG
        raise DreamsculptError(f"{name} is not a PNG{_reason(exc)}. Save depth as a 16-bit grey PNG in "
                               "millimetres.") from None
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DreamsculptError(f"{name} is {image.mode}, not 16-bit grey. Save depth as a 16-bit grey PNG in "
                               "millimetres (0: no depth).")
    width, height = image.size
    if not (low <= width <= high and low <= height <= high):
        raise DreamsculptError(f"{name} is {width}x{height} pixels; use one between {low} and {high} pixels "
                               "on each side.")
    import numpy as np

    mm = np.asarray(image, dtype=np.int64).clip(0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(mm).save(buffer, "PNG")
    return DecodedImage(buffer.getvalue(), width, height, False)


def _to_rgb_or_rgba(image):
    import numpy as np
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):   # 16-bit or float grey: to 8 bits
        grey = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode != "F" else max(float(grey.max()), 1.0)
        image = Image.fromarray((grey / scale * 255).clip(0, 255).round().astype(np.uint8), "L")
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    image = image.convert("RGBA" if transparent else "RGB")
    if transparent and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")   # an alpha channel that hides nothing is no mask
    return image


def _reason(exc: Exception) -> str:
    """' (what Pillow said)', or '' when it only says it does not know the format."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return ""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f" ({text[:200]})"
