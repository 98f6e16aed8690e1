"""Random translations on the device, the flax twin's half of fashion_common/augment.py.

Mirrors fashion_torch/augment.py: one batched gather, traced into the jitted step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# ToTensor's x / 255 for every uint8 value, correctly rounded (numpy divides as torch does). XLA on the
# CPU computes `x / 255.0` as x * (1/255), 1 ulp off torch on 126 of the 256 values, a difference the
# lockstep twins would carry in every input; a gather from this table gives torch's exact values.
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_unit(images):
    """uint8 images (any shape) -> float32 in [0, 1], bit-equal to torch's images.to(float32) / 255."""
    return jnp.asarray(_UNIT)[images]


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
