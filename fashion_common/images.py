"""Image files -> model inputs for scripts/predict.py; framework-free, so both twins see the same pixels.

Fashion-MNIST images are light garments on a black background, 28x28 grayscale. A photo of a
dark garment on a white background is the opposite, and the model will mostly call it a bag.
Nothing here inverts automatically: a guess would be wrong for the inputs that are already
dataset-like. Invert such images yourself (e.g. `PIL.ImageOps.invert`) before predicting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from .data import scale_images
from .errors import ImageError
from .spec import DEFAULT_SPEC


def load_image(path, size: Tuple[int, int] = DEFAULT_SPEC.image_size) -> np.ndarray:
    """Read a PNG or JPEG as the model sees Fashion-MNIST: float32 (H, W) = (28, 28) in [0, 1].

    Transparent pixels become black (the dataset's background), the image is padded with black to
    a square so the garment keeps its proportions (the dataset's images were resized by their
    longest edge), then converted to grayscale and resized with a Lanczos filter, which
    antialiases when shrinking. Missing or unreadable files raise ImageError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if not path.is_file():
        raise ImageError(f"{path} is not a file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            gray = _on_black(im).convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else (getattr(e, "strerror", None) or str(e))
        raise ImageError(f"{path} is not a readable image ({reason}); expected a PNG or JPEG file") from None
    side = max(gray.size)
    square = Image.new("L", (side, side), 0)
    square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
    h, w = size
    small = square.resize((w, h), Image.Resampling.LANCZOS)
    return scale_images(np.asarray(small, dtype=np.uint8)[None])[0]  # (H, W); /255 exactly as the training data


def _on_black(im):
    """Composite an image with an alpha channel onto black; others pass through unchanged."""
    from PIL import Image

    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return im
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
