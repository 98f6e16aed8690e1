"""Random translations on the device, the torch twin's half of fashion_common/augment.py.

Mirrors fashion_flax/augment.py: one batched gather, no per-sample Python, no PIL.
"""

from __future__ import annotations

import torch


def shift_images(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """images (B, H, W) shifted by offsets (B, 2) of (dy, dx), zeros outside.

    out[b, i, j] = images[b, i - dy, j - dx].
    """
    batch, height, width = images.shape
    offsets = offsets.to(device=images.device, dtype=torch.int64)
    rows = torch.arange(height, device=images.device) - offsets[:, :1]  # (B, H) source row of each output row
    cols = torch.arange(width, device=images.device) - offsets[:, 1:]  # (B, W) source column
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (B, H, W)
    b = torch.arange(batch, device=images.device)[:, None, None]
    gathered = images[b, rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]]  # (B, H, W)
    return torch.where(inside, gathered, torch.zeros((), dtype=images.dtype, device=images.device))
