"""Any input either twin takes, described and converted to numpy without importing a framework.

The model inputs of both twins go through here when they are not the twin's own array type, so a
batch from NumPy, a nested list, a JAX array or a torch tensor, in any floating dtype either library
has (float16, bfloat16, the float8 kinds, float32, float64), is accepted alike, and an integer, bool
or complex one is refused alike, naming the dtype the caller gave (fashion_common.errors.check_input).
"""

from __future__ import annotations

import numpy as np

# Floating dtypes numpy has no name for; ml_dtypes (a JAX dependency) and torch name them so.
EXTRA_FLOATS = ("bfloat16", "float8", "float6", "float4")


def is_floating_name(name: str) -> bool:
    """True for float16/32/64 and the extra floats (bfloat16, float8_e4m3fn, ...), whichever library named them."""
    return name.startswith(("float", "half", "double")) or name.startswith(EXTRA_FLOATS)


def to_numpy(x) -> tuple[np.ndarray, str, bool]:
    """(x as a numpy array, the dtype name the caller gave, whether it is floating point).

    A torch tensor is recognised by its type's module (torch is never imported here); one in a
    dtype numpy lacks (bfloat16, float8) comes through float32, which holds every such value exactly.
    """
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        name = str(x.dtype).removeprefix("torch.")
        floating = bool(x.is_floating_point())
        t = x.detach().cpu()
        if floating and name not in ("float16", "float32", "float64"):
            t = t.float()
        if t.is_complex():
            t = t.resolve_conj()
        return t.resolve_neg().numpy(), name, floating
    array = np.asarray(x)
    name = str(array.dtype)
    return array, name, array.dtype.kind == "f" or (array.dtype.kind == "V" and name.startswith(EXTRA_FLOATS))
