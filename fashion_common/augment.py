"""Random translations, drawn once on the host and shared by both twins.

The offsets come from one numpy generator per (seed, epoch), like the batch order; each twin
applies them on its own device inside its training step (fashion_torch/augment.py,
fashion_flax/augment.py), so with the same seed both twins see the very same shifted pixels
and stay in lockstep. `shift_images` here is the numpy oracle the twins are tested against.

Convention: offsets (dy, dx) move the image down by dy rows and right by dx columns,
out[i, j] = image[i - dy, j - dx], with zeros (black, the background) shifted in.
"""

from __future__ import annotations

import numpy as np

# Separates this generator's stream from batch_order's np.random.default_rng([seed, epoch]).
_STREAM = 0x5EF7


def shift_offsets(seed: int, epoch: int, steps: int, batch: int, max_shift: int) -> np.ndarray:
    """Offsets (steps, batch, 2) int8 of (dy, dx), each uniform in [-max_shift, max_shift].

    All zero if max_shift is 0.
    """
    if max_shift < 0 or max_shift > 27:
        raise ValueError(f"max_shift must be in [0, 27], got {max_shift}")
    if max_shift == 0:
        return np.zeros((steps, batch, 2), np.int8)
    rng = np.random.default_rng([seed, epoch, _STREAM])
    return rng.integers(-max_shift, max_shift + 1, size=(steps, batch, 2)).astype(np.int8)


def shift_images(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Numpy oracle: images (B, H, W) shifted by offsets (B, 2) of (dy, dx), zero fill."""
    out = np.zeros_like(images)
    height, width = images.shape[1:]
    for b, (dy, dx) in enumerate(np.asarray(offsets, np.int64)):
        src = images[b, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        out[b, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out
