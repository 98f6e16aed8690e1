"""Random translations on the device, the NNX twin's half of fashion_common/augment.py.

Mirrors fashion_torch/augment.py and fashion_flax/augment.py. The shift is a plain JAX gather with no
module in it, so the NNX twin uses the linen twin's very function: one copy for both Flax twins.
"""

from __future__ import annotations

from fashion_flax.augment import shift_images, to_unit

__all__ = ["shift_images", "to_unit"]
