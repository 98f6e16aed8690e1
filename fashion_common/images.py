"""Image files -> model inputs for `fashion-twins predict`; framework-free, so both twins see the same pixels.

Fashion-MNIST was made from product photos by a known pipeline (Xiao et al. 2017, arXiv:1708.07747):
trim the background, resize the longest edge to 28, extend to 28x28 with the garment centred,
negate, grayscale. `prepare_image` follows it: it finds the garment (the alpha channel where
there is one, else what stands out from a smooth surface fitted to the border: see fit_background and
foreground_mask, which a gradient, sensor noise and a soft shadow do not fool), crops to it, keeps the aspect
ratio, resizes the longest edge to GARMENT_SIZE, centres it on black, and inverts a dark garment
on a light background (the dataset draws light garments on black). Measured on the 60,000
training images: the garment's bounding box spans all 28 pixels of its longer side in 98.3 % of
them (27 or 28 in 99.97 %), centred at 13.5, so GARMENT_SIZE is the full 28 (tests/test_images.py).

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

# The square on the longer edge may hold at most this many pixels: 6000 x 6000. Decoded as 8-bit
# RGBA plus the float32 copies that is about 0.5 GB at the very worst; phone photos (12-50 Mpx,
# 4:3) make a square of 16-67 Mpx, so a 48 Mpx photo must be downscaled first.
MAX_PIXELS = 36_000_000
INVERT_CHOICES = ("auto", "yes", "no")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PNG/TIFF 16-bit gray opens as one of these
GARMENT_SIZE = 28  # the longest edge of the garment's box in the dataset (see the docstring): all of the 28 pixels
BACKGROUND_TOL = 0.1  # a cut-out whose median is above 1 - this is near-white: kept light, not negated
# The garment on a photo's background (fit_background, foreground_mask):
FIT_SIDE = 256  # the border is sampled about this often along the longer side for the fit
FIT_ROUNDS = 3  # fit, drop the border pixels it leaves out, refit
FIT_OUTLIER_SIGMAS = 3.0  # a border pixel this many noise sigmas off the fit is garment or shadow, not paper
NOISE_FLOOR = 1 / 255  # the noise sigma is never taken below one 8-bit level (a flat canvas has none)
FOREGROUND_SIGMAS = 5.0  # the garment is this many noise sigmas away from the paper: Gaussian noise passes 3e-7
# ...and at least this share of the paper's light. JPEG noise at quality 75 stays under ~0.05; a soft drop shadow
# (benchmarks/photos.py: 35 % of the light under the garment, blurred) reaches further than the garment the lower it
# is: on 150 shadowed photos 85 % agreed with the originals at 0.05, 89 % at 0.07, 91 % at 0.10, 95 % at 0.13,
# while flat photos stayed at 93-97 %. The dataset's own faint edge pixels (under 0.13) are what is given up.
MIN_CONTRAST = 0.13
MIN_ROOM = 0.25  # the least room to darken or lighten (of full scale) a residual is measured against
JOIN_FRACTION = 0.02  # pieces closer than this share of the longer side are one garment (a sandal's straps)
ALPHA_TOL = 0.1  # alpha above this is garment; anti-aliased edges fade through it


def load_image(path, size: tuple[int, int] = DEFAULT_SPEC.image_size, invert: str = "auto") -> np.ndarray:
    """Read an image as the model sees Fashion-MNIST: float32 (H, W) = (28, 28) in [0, 1]; see prepare_image."""
    return prepare_image(path, size, invert)[0]


def prepare_image(
    path, size: tuple[int, int] = DEFAULT_SPEC.image_size, invert: str = "auto"
) -> tuple[np.ndarray, bool]:
    """Read a PNG or JPEG -> (float32 (H, W) in [0, 1] quantized to 1/255 like the dataset, inverted?).

    EXIF orientation is applied; 16-bit grayscale is scaled by 65535 (PIL reads 16-bit RGB as 8-bit
    already); the image is made grayscale. Then, as the dataset was made:
    - with an alpha channel, the garment is where alpha > ALPHA_TOL; auto inverts it over white, as the
      dataset negated its product photos, unless it is near-white itself (median over 1 - BACKGROUND_TOL);
      either way the transparent background becomes black;
    - without one, the paper's light is fitted as a quadratic surface to the border (fit_background), and the
      garment is the largest piece that stands out from it (foreground_mask); auto inverts when the paper is
      light (median >= 0.5) and the garment darker than it; the paper's surface is then taken off, so a dark
      background becomes black whatever its gradient;
    - the picture is cropped to the garment's box, its longest edge resized to GARMENT_SIZE with
      Lanczos (antialiased when shrinking), aspect ratio kept, and centred on a black (H, W) canvas.
    An image already (H, W) is taken as dataset-framed (a Fashion-MNIST image, or what
    --save-preprocessed wrote): it is only made grayscale and inverted as asked, never cropped.
    Missing, unreadable or too large files raise ImageError naming the file.
    """
    if invert not in INVERT_CHOICES:
        raise ImageError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    gray, alpha = _read_gray(Path(path))  # (h, w) float32 in [0, 1]; alpha (h, w) or None
    if gray.shape == tuple(size):
        if alpha is not None:
            gray = gray * alpha  # transparent -> black, the dataset's background
        inverted = invert == "yes" or (invert == "auto" and border_is_lighter(gray))
        small = 1.0 - gray if inverted else gray
    else:
        garment, mask, inverted = _isolate_garment(gray, alpha, invert)
        small = _crop_and_centre(garment, mask, size)
    return scale_images(np.round(small * 255).astype(np.uint8)[None])[0], inverted  # (H, W); /255 as the training data


def _isolate_garment(gray: np.ndarray, alpha: np.ndarray | None, invert: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(h, w) gray and alpha -> (light-on-black gray (h, w), garment mask (h, w) bool, inverted?)."""
    if alpha is not None:
        # The dataset's product photos were shot on white and negated: over white, a garment that is not
        # white itself is dark on light. A near-white one would vanish when negated: it goes onto black as it is.
        mask = alpha > ALPHA_TOL
        on_white = gray * alpha + (1.0 - alpha)
        dark = mask.any() and float(np.median(on_white[mask])) < 1.0 - BACKGROUND_TOL
        inverted = invert == "yes" or (invert == "auto" and bool(dark))
        return (1.0 - on_white if inverted else gray * alpha), mask, inverted
    background = fit_background(gray)  # (h, w): the paper's own light, gradient and vignetting included
    level = float(np.median(background))
    mask, dark = foreground_mask(gray, background)
    # Dark on light: a light background, and a garment darker than it. (border_is_lighter's centre test would miss
    # an off-centre garment on a large canvas, whose centre is background too.)
    inverted = invert == "yes" or (invert == "auto" and level >= 0.5 and dark)
    if inverted:
        gray, background, level = 1.0 - gray, 1.0 - background, 1.0 - level
    if level < 0.5:  # a dark background (the dataset's, after inversion): make it black, keep the range
        gray = np.clip((gray - background) / np.maximum(1.0 - background, 1e-3), 0.0, 1.0)
    return gray, mask, inverted


# ----------------------------------------------------------------------------- the garment on a photo's background


def fit_background(gray: np.ndarray) -> np.ndarray:
    """(h, w) gray -> (h, w) background: a quadratic surface least-squares fitted to the border ring, robustly.

    A photo's paper is not one colour: light falls off across it (a gradient, 200 -> 250 of 255 in a
    phone photo of a sheet) and towards the corners (vignetting). A second-order polynomial in x and y
    holds both. Only the border ring is fitted (the garment sits inside it), and border pixels that
    the fit leaves far out (a sleeve or a shadow reaching the edge) are dropped and the fit redone.
    """
    h, w = gray.shape
    step = max(1, round(max(h, w) / FIT_SIDE))  # a few hundred thousand border pixels are far more than 6 terms need
    ring = _border_ring(gray.shape)
    rows, cols = np.nonzero(ring[::step, ::step])
    rows, cols = rows * step, cols * step
    values = gray[rows, cols].astype(np.float64)
    terms = _poly_terms(rows / max(h - 1, 1), cols / max(w - 1, 1))  # (n, 6)
    # Start from the median, robust to a garment covering up to half the border, not from a plain least-squares
    # fit, which a sleeve across one side would bend towards itself
    spread = max(_robust_sigma(values), NOISE_FLOOR)
    keep = np.abs(values - np.median(values)) <= FIT_OUTLIER_SIGMAS * spread
    for _ in range(FIT_ROUNDS):
        coef, *_ = np.linalg.lstsq(terms[keep], values[keep], rcond=None)
        residual = values - terms @ coef
        spread = max(_robust_sigma(residual[keep]), NOISE_FLOOR)
        keep = np.abs(residual) <= FIT_OUTLIER_SIGMAS * spread
    y = (np.arange(h) / max(h - 1, 1))[:, None]  # (h, 1)
    x = (np.arange(w) / max(w - 1, 1))[None, :]  # (1, w)
    c = coef.astype(np.float32)
    return np.clip(c[0] + c[1] * y + c[2] * x + c[3] * y * y + c[4] * y * x + c[5] * x * x, 0.0, 1.0).astype(np.float32)


def foreground_mask(gray: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, bool]:
    """(h, w) gray and its fitted background -> (garment mask (h, w) bool, garment darker than the background?).

    The residual from the background is thresholded at FOREGROUND_SIGMAS times the border's own noise
    (its median absolute deviation, so a few garment pixels in the border do not inflate it), and never
    below MIN_CONTRAST (JPEG ringing, a flat synthetic canvas whose noise is 0). The pixels past the
    threshold are joined across gaps of JOIN_FRACTION of the picture (a sandal's straps, a garment's
    dim seams), and the largest joined piece is the garment: sensor-noise specks and dust far from
    it are not. Its polarity (darker or lighter than the paper) is the sign most of its pixels take,
    and only the pixels of that sign are kept: a shadow, darker than the paper, never widens a light garment.
    """
    residual = gray - background  # (h, w)
    # Relative to the room the paper leaves: a dark garment takes away a share of the paper's light (the dataset's
    # value, once negated), a light one adds a share of what the paper lacks of white. The room is never taken
    # under MIN_ROOM: on white paper there is none above it, and a level of noise would count as a whole garment.
    room = np.where(residual < 0, background, 1.0 - background)
    ink = residual / np.maximum(room, MIN_ROOM)
    ring = _border_ring(gray.shape)
    noise = _robust_sigma(ink[ring])
    threshold = max(FOREGROUND_SIGMAS * noise, MIN_CONTRAST)
    either = np.abs(ink) > threshold
    if not either.any():
        return either, False
    dark = bool(np.median(ink[either]) < 0)
    mask = (-ink if dark else ink) > threshold
    return largest_piece(mask, max(1, round(JOIN_FRACTION * max(gray.shape)))), dark


def largest_piece(mask: np.ndarray, join: int) -> np.ndarray:
    """(h, w) bool -> the pixels of `mask` in its largest piece, pieces closer than `join` pixels counting as one."""
    joined = _dilate(mask, join)
    labels = _label(joined)  # (h, w) int, 0 outside
    counts = np.bincount(labels[mask], minlength=labels.max() + 1)  # mask pixels per piece
    counts[0] = 0
    return mask & (labels == int(counts.argmax()))


def _poly_terms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n,) row and column in [0, 1] -> (n, 6) the terms of a quadratic surface: 1, y, x, y^2, yx, x^2."""
    return np.stack([np.ones_like(y), y, x, y * y, y * x, x * x], axis=1)


def _robust_sigma(values: np.ndarray) -> float:
    """The standard deviation a Gaussian with this median absolute deviation would have (1.4826 MAD)."""
    if values.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(h, w) bool grown by a (2 radius + 1) square, separably, with running sums (no image library needed)."""
    out = mask
    for axis in (0, 1):
        n = out.shape[axis]
        sums = np.cumsum(out, axis=axis, dtype=np.int32)
        sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)  # (n + 1) along axis
        hi = np.minimum(np.arange(n) + radius + 1, n)
        lo = np.maximum(np.arange(n) - radius, 0)
        out = (np.take(sums, hi, axis=axis) - np.take(sums, lo, axis=axis)) > 0
    return out


def _label(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool -> (h, w) int32 piece numbers (8-connected, 1..n; 0 outside), by union-find over row runs."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), bool)
    padded[:, 1:-1] = mask
    edges = np.diff(padded.astype(np.int8), axis=1)  # (h, w + 1): +1 where a run starts, -1 one past its end
    run_rows, run_starts = np.nonzero(edges == 1)
    run_ends = np.nonzero(edges == -1)[1]  # same order: row-major, one end per start
    parent = list(range(len(run_rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(run_rows, np.arange(h + 1))  # runs of row r are first[r]:first[r + 1]
    for r in range(1, h):
        above, here = range(first[r - 1], first[r]), range(first[r], first[r + 1])
        j = above.start
        for i in here:  # runs overlap 8-connected when [start - 1, end] meets the run above
            while j < above.stop and run_ends[j] < run_starts[i]:
                j += 1
            k = j
            while k < above.stop and run_starts[k] <= run_ends[i]:
                parent[root(i)] = root(k)
                k += 1
    labels = np.zeros((h, w), np.int32)
    roots = np.array([root(i) for i in range(len(parent))], np.int64)
    _, numbers = np.unique(roots, return_inverse=True)
    for i in range(len(parent)):
        labels[run_rows[i], run_starts[i] : run_ends[i]] = numbers[i] + 1
    return labels


def _crop_and_centre(gray: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop (h, w) to the box of `mask` (all of it if empty), longest edge -> GARMENT_SIZE, centred on (H, W) black."""
    from PIL import Image

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = gray.shape
    out_h, out_w = size
    scale = min(GARMENT_SIZE, out_h, out_w) / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray(gray.astype(np.float32)).resize((new_w, new_h), Image.Resampling.LANCZOS)  # mode "F"
    canvas = np.zeros((out_h, out_w), np.float32)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)
    return canvas


def _border_ring(shape: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the outer 1/8 of each side (at least one pixel)."""
    h, w = shape
    bh, bw = max(1, h // 8), max(1, w // 8)
    ring = np.ones((h, w), bool)
    ring[bh : h - bh, bw : w - bw] = False
    return ring


def border_is_lighter(gray: np.ndarray) -> bool:
    """True for a dark-on-light picture: the border (outer 1/8 of each side) is light and lighter than the centre half.

    Medians, and a light border (median >= 0.5): with means, or without the second condition,
    82 of the 10,000 test images (open sandals: a dark centre, a garment touching the edge) would
    be inverted; with this rule none of the 70,000 dataset images are (tests/test_images.py).
    """
    h, w = gray.shape
    ring = _border_ring(gray.shape)
    centre = gray[h // 4 : h - h // 4, w // 4 : w - w // 4]
    if ring.all() or centre.size == 0:
        return False  # too small to have both a border and a centre
    border = float(np.median(gray[ring]))
    return border >= 0.5 and border > float(np.median(centre))


def _read_gray(path: Path) -> np.ndarray:
    """Open, check the size before decoding, decode -> ((h, w) float32 gray in [0, 1], alpha (h, w) or None)."""
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
                        f"{path} is too large: {w}x{h} pixels, a {side}x{side} square on its longer edge; "
                        f"the limit is {MAX_PIXELS:,} pixels in that square: downscale it first"
                    )
                im.load()  # decode now, so a truncated file fails here and not later
                im = ImageOps.exif_transpose(im)  # phone photos: rotate as the camera meant
                return _to_gray_float(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:  # PIL's own check at open, for sizes far above ours
        raise ImageError(
            f"{path} is too large to decode; the limit is {MAX_PIXELS:,} pixels in the square on its longer edge: "
            "downscale it first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = (
            "not an image PIL can read"
            if isinstance(e, UnidentifiedImageError)
            else (getattr(e, "strerror", None) or str(e))
        )
        raise ImageError(f"{path} is not a readable image ({reason}); expected a PNG or JPEG file") from None


def _to_gray_float(im) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode -> ((h, w) float32 gray in [0, 1], scaled by the mode's range (8 or 16 bits); alpha or None)."""
    if im.mode in SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0), None
    if im.mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0), None
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, None
    rgba = im.convert("RGBA")  # (h, w, 4): the colour of a transparent pixel is kept apart from its alpha
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    return np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0, alpha
