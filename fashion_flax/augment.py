"""Random translations on the device, the flax twin's half of fashion_common/augment.py.

Mirrors fashion_torch/augment.py: one batched gather, traced into the jitted step.
"""

from __future__ import annotations

import jax.numpy as jnp


def shift_images(images, offsets):
    """images (B, H, W) shifted by offsets (B, 2) of (dy, dx), zeros outside.

    out[b, i, j] = images[b, i - dy, j - dx].
    """
    batch, height, width = images.shape
    offsets = offsets.astype(jnp.int32)
    rows = jnp.arange(height) - offsets[:, :1]  # (B, H) source row of each output row
    cols = jnp.arange(width) - offsets[:, 1:]  # (B, W) source column
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (B, H, W)
    b = jnp.arange(batch)[:, None, None]
    gathered = images[
        b, jnp.clip(rows, 0, height - 1)[:, :, None], jnp.clip(cols, 0, width - 1)[:, None, :]
    ]  # (B, H, W)
    return jnp.where(inside, gathered, jnp.zeros((), images.dtype))
