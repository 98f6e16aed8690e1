"""Exceptions both twins raise, with messages built in one place so the twins say the same thing.

The rules both twins enforce (each by calling the shared check here, before any compute):
- Model input: a NumPy array, a nested list, a JAX array or a torch tensor, in either twin
  (fashion_common.inputs.to_numpy), in any float dtype either library has (float16/32/64,
  bfloat16, float8). Shape (N, 28, 28) or (N, 1, 28, 28), N >= 0: an empty batch gives (0, 10)
  logits. Other shapes: InputShapeError. Integer, bool or complex dtypes: InputDtypeError naming the
  dtype given (scale uint8 by 1/255 first). Float dtypes are cast to float32 (exactly, but float64).
- Activations (binary_step, sigmoid, tanh, relu, softmax): the same inputs, floating only, dtype kept
  where the twin's library has it; integer, bool, complex and float8 (a storage format, no torch
  arithmetic) inputs raise InputDtypeError (check_activation_input).
- softmax `dim`: an int (numpy ints too, not bool) in [-ndim, ndim - 1], a 0-d input counting as
  1-d; anything else raises DimError (an IndexError and a TypeError, as torch's own are) (check_dim).
- NaN and inf propagate alike. The one deliberate difference: XLA on CPU flushes float32 subnormal
  inputs (|x| < 1.18e-38) to zero, torch keeps them (pinned in tests/test_activations.py).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence


class FashionTwinsError(Exception):
    """Base class: every error the project raises on purpose."""


class InputShapeError(FashionTwinsError, ValueError):
    """A model input whose shape is not (N, 28, 28) or (N, 1, 28, 28)."""


class InputDtypeError(FashionTwinsError, TypeError):
    """A model input that is not floating point (uint8 images must be scaled by 1/255 first)."""


class CheckpointError(FashionTwinsError, ValueError):
    """A checkpoint file that is missing, unreadable or does not match the model."""


class WriteError(FashionTwinsError, OSError):
    """An output file that could not be written (disk full, permission, missing folder); the old file is kept."""


class NonFiniteLossError(FashionTwinsError, ArithmeticError):
    """Training whose loss became NaN or Inf; the loop stops before saving, so the last good checkpoint stays."""


class DimError(FashionTwinsError, IndexError, TypeError):
    """A `dim` argument that is not an int, or out of range for the input (softmax)."""


class DataError(FashionTwinsError, RuntimeError):
    """Fashion-MNIST files that are missing, partial or corrupt."""


class DeviceError(FashionTwinsError, RuntimeError):
    """--device gpu where the framework sees no GPU."""


class ConfigError(FashionTwinsError, ValueError):
    """A config override with an unknown key or a wrong type."""


class ImageError(FashionTwinsError, ValueError):
    """An image file for prediction that is missing or that PIL cannot read."""


def check_input(shape: Sequence[int], dtype_name: str, is_floating: bool, image_size=(28, 28)) -> None:
    """Raise the shared error for a bad model input; both twins call this before any compute.

    Accepted: (N, H, W), the tutorial's `torch.rand(3, 28, 28)`, and (N, 1, H, W), what ToTensor
    plus a DataLoader yields. Any floating dtype is accepted and cast to float32 by both twins;
    integer and bool inputs are refused, since uint8 pixels need the /255 scaling first.
    """
    shape = tuple(int(s) for s in shape)
    h, w = image_size
    ok = (len(shape) == 3 and shape[1:] == (h, w)) or (len(shape) == 4 and shape[1:] == (1, h, w))
    if not ok:
        raise InputShapeError(
            f"expected input of shape (N, {h}, {w}) or (N, 1, {h}, {w}), got {shape}"
            + ("; add a batch dimension, e.g. x[None]" if shape[-2:] == (h, w) and len(shape) < 3 else "")
        )
    if not is_floating:
        raise InputDtypeError(
            f"expected a floating-point input, got {dtype_name}; scale uint8 images to [0, 1] with x / 255 first"
        )


def check_dim(dim, ndim: int, what: str = "softmax") -> int:
    """The shared rule for a `dim` argument: an int (not bool) in [-ndim, ndim - 1]; returns it as a Python int.

    A 0-d input counts as 1-d, as in torch (dims -1 and 0 are valid). Both twins call this before any
    compute, so a bad dim gives the same DimError and message in both (torch alone would raise
    IndexError or TypeError, JAX ValueError or TypeError, with other words).
    """
    if isinstance(dim, bool) or dim is None:
        raise DimError(f"{what}: dim must be an int, got {dim!r}")
    try:
        dim = operator.index(dim)  # int, numpy integers; refuses 1.0, "1", None
    except TypeError:
        raise DimError(f"{what}: dim must be an int, got {type(dim).__name__} {dim!r}") from None
    size = max(int(ndim), 1)
    if not -size <= dim < size:
        raise DimError(f"{what}: dim {dim} is out of range for a {int(ndim)}-d input (expected {-size} to {size - 1})")
    return dim


def check_activation_input(name: str, dtype_name: str, is_floating: bool) -> None:
    """The shared rule for the activations: floating inputs only; integer, bool or complex inputs raise InputDtypeError.

    Refusing (rather than casting) keeps the activations' rule the model's rule, and avoids the
    frameworks' own disagreement: torch.relu keeps an int dtype, torch.sigmoid promotes to float.
    """
    if not is_floating:
        raise InputDtypeError(f"{name} expects a floating-point input, got {dtype_name}; cast it to float32 first")
    if dtype_name.startswith(
        ("float8_", "float6_", "float4_")
    ):  # storage formats (ml_dtypes names): torch has no arithmetic in them
        raise InputDtypeError(f"{name} does not compute in {dtype_name} (a storage format); cast it to float32 first")


MAX_SEED = 2**32 - 1  # what the command line's --seed takes, and numpy's and torch's seeding both hold


def check_seed(seed) -> int | None:
    """The shared rule for create_model's seed: None, or an int (numpy ints too, not bool) in 0..MAX_SEED.

    torch.manual_seed alone took 1.5 and "0"; jax.random.PRNGKey refused them with its own words.
    Returns the seed as a Python int (or None).
    """
    if seed is None:
        return None
    expected = f"seed must be None or an int from 0 to {MAX_SEED}"
    if isinstance(seed, bool):
        raise TypeError(f"{expected}, got bool {seed!r}")
    try:
        value = operator.index(seed)  # int, numpy integers; refuses 1.5, "0", 1.0
    except TypeError:
        raise TypeError(f"{expected}, got {type(seed).__name__} {seed!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{expected}, got {value}")
    return value
