"""Image files -> model inputs for `fashion-twins predict`; framework-free, so both twins see the same pixels.

Fashion-MNIST images are light garments on a black background, 28x28 grayscale, 8 bits. A photo
of a dark garment on a white background is the opposite, and the model will mostly call it a
bag, so `invert="auto"` (the default) inverts an image whose border is lighter than its centre.

Hostile files: the dimensions are read from the header and checked against MAX_PIXELS before
anything is decoded (a few-KB PNG can declare 100,000 x 100,000 pixels), so PIL's
DecompressionBombError never surfaces and an accepted image costs at most a few hundred MB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .data import scale_images
from .errors import ImageError
from .spec import DEFAULT_SPEC

# The padded square (side = the longer edge) may hold at most this many pixels: 6000 x 6000.
# Decoded as 8-bit RGB plus the float32 grayscale copies that is about 0.5 GB at the very worst;
# phone photos (12-50 Mpx, 4:3) pad to a square of 16-67 Mpx, so a 48 Mpx photo must be downscaled first.
MAX_PIXELS = 36_000_000
INVERT_CHOICES = ("auto", "yes", "no")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PNG/TIFF 16-bit gray opens as one of these


def load_image(path, size: tuple[int, int] = DEFAULT_SPEC.image_size, invert: str = "auto") -> np.ndarray:
    """Read an image as the model sees Fashion-MNIST: float32 (H, W) = (28, 28) in [0, 1]; see prepare_image."""
    return prepare_image(path, size, invert)[0]


def prepare_image(
    path, size: tuple[int, int] = DEFAULT_SPEC.image_size, invert: str = "auto"
) -> tuple[np.ndarray, bool]:
    """Read a PNG or JPEG -> (float32 (H, W) in [0, 1] quantized to 1/255 like the dataset, inverted?).

    EXIF orientation is applied; transparent pixels become black (the dataset's background);
    16-bit grayscale is scaled by 65535 (PIL reads 16-bit RGB as 8-bit already); the image is
    made grayscale, inverted if asked (auto: see border_is_lighter), padded with black to a
    square so the garment keeps its proportions, and resized with Lanczos (antialiases when shrinking).
    Missing, unreadable or too large files raise ImageError naming the file.
    """
    if invert not in INVERT_CHOICES:
        raise ImageError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    gray = _read_gray(Path(path))  # (h, w) float32 in [0, 1]
    inverted = invert == "yes" or (invert == "auto" and border_is_lighter(gray))
    if inverted:
        gray = 1.0 - gray
    small = _pad_and_resize(gray, size)
    return scale_images(np.round(small * 255).astype(np.uint8)[None])[0], inverted  # (H, W); /255 as the training data


def border_is_lighter(gray: np.ndarray) -> bool:
    """True for a dark-on-light picture: the border (outer 1/8 of each side) is light and lighter than the centre half.

    Medians, and a light border (median >= 0.5): with means, or without the second condition,
    82 of the 10,000 test images (open sandals: a dark centre, a garment touching the edge) would
    be inverted; with this rule none of the 70,000 dataset images are (tests/test_images.py).
    """
    h, w = gray.shape
    bh, bw = max(1, h // 8), max(1, w // 8)
    ring = np.ones((h, w), bool)
    ring[bh : h - bh, bw : w - bw] = False
    centre = gray[h // 4 : h - h // 4, w // 4 : w - w // 4]
    if ring.all() or centre.size == 0:
        return False  # too small to have both a border and a centre
    border = float(np.median(gray[ring]))
    return border >= 0.5 and border > float(np.median(centre))


def _read_gray(path: Path) -> np.ndarray:
    """Open, check the size before decoding, decode -> (h, w) float32 in [0, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if not path.is_file():
        raise ImageError(f"{path} is not a file")
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower budget below; PIL's warning and error never reach the user.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
                side = max(w, h)
                if side * side > MAX_PIXELS:
                    raise ImageError(
                        f"{path} is too large: {w}x{h} pixels, padded to {side}x{side}; the limit is {MAX_PIXELS:,} pixels "
                        f"after padding to a square: downscale it first"
                    )
                im.load()  # decode now, so a truncated file fails here and not later
                im = ImageOps.exif_transpose(im)  # phone photos: rotate as the camera meant
                return _to_gray_float(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:  # PIL's own check at open, for sizes far above ours
        raise ImageError(
            f"{path} is too large to decode; the limit is {MAX_PIXELS:,} pixels after padding to a square: downscale it first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        reason = (
            "not an image PIL can read"
            if isinstance(e, UnidentifiedImageError)
            else (getattr(e, "strerror", None) or str(e))
        )
        raise ImageError(f"{path} is not a readable image ({reason}); expected a PNG or JPEG file") from None


def _to_gray_float(im) -> np.ndarray:
    """Any PIL mode -> (h, w) float32 in [0, 1], scaled by the mode's real range (8 or 16 bits)."""
    if im.mode in SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if im.mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    return np.asarray(_on_black(im).convert("L"), dtype=np.float32) / 255.0


def _pad_and_resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> black-padded square -> (H, W) with Lanczos, in float so 16-bit detail survives until the final rounding."""
    from PIL import Image

    h, w = gray.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = gray
    out_h, out_w = size
    small = Image.fromarray(square).resize((out_w, out_h), Image.Resampling.LANCZOS)  # float32 -> mode "F"
    return np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)


def _on_black(im):
    """Composite an image with an alpha channel onto black; others pass through unchanged."""
    from PIL import Image

    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return im
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
