"""The architecture spec, class names and checkpoint key names: the one home for both twins.

Nothing here imports torch or jax, so either twin can import it where the other
framework is absent.
"""

from __future__ import annotations

import dataclasses

# The ten Fashion-MNIST classes, in label order (label 0 is "T-shirt/top").
# The twins, by their --backend name; twin NAME is the package fashion_NAME (nnx: the Flax NNX twin). The one
# list: the CLI's choices, the sidecar reader, the report's columns and the tests' parametrization all read it.
BACKENDS: tuple[str, ...] = ("torch", "flax", "nnx")

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Hidden and output activations a spec may name; both twins implement each under this name.
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh", "binary_step")
# How printouts name them: torch's module class names (BinaryStep is this project's module).
ACTIVATION_DISPLAY = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "binary_step": "BinaryStep"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The MLP both twins build: Flatten -> (Linear -> act) * len(hidden) -> Linear [-> out act]."""

    image_size: tuple[int, int] = (28, 28)  # (H, W) of one grayscale image
    hidden_sizes: tuple[int, ...] = (512, 512)  # the tutorial's two hidden layers
    num_classes: int = 10  # Fashion-MNIST has ten classes
    activation: str = "relu"  # hidden activation, one of ACTIVATIONS
    # None returns logits. "relu" reproduces the tutorial's "Define the Class" cell exactly,
    # but clips every negative logit, which hurts softmax and the loss (see README).
    output_activation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        for name in (self.activation, self.output_activation):
            if name is not None and name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1 or self.num_classes < 1:
            raise ValueError(f"layer sizes must be positive, got hidden_sizes={self.hidden_sizes}")

    @property
    def in_features(self) -> int:
        return self.image_size[0] * self.image_size[1]  # 784 for 28x28

    @property
    def layer_sizes(self) -> tuple[tuple[int, int], ...]:
        """(fan_in, fan_out) of each Linear, in order: ((784, 512), (512, 512), (512, 10))."""
        sizes = (self.in_features,) + self.hidden_sizes + (self.num_classes,)
        return tuple(zip(sizes[:-1], sizes[1:], strict=True))

    @property
    def linear_indices(self) -> tuple[int, ...]:
        """Position of each Linear inside `linear_relu_stack`: Linear, act, Linear, act, Linear -> (0, 2, 4)."""
        return tuple(2 * i for i in range(len(self.layer_sizes)))

    @property
    def stack_length(self) -> int:
        """Number of entries in `linear_relu_stack` (5 by default, 6 with an output activation)."""
        return 2 * len(self.layer_sizes) - 1 + (self.output_activation is not None)

    def activation_at(self, position: int) -> str:
        """The activation at a non-Linear stack position: the hidden one, or the output one at the end."""
        is_output = self.output_activation is not None and position == self.stack_length - 1
        return self.output_activation if is_output else self.activation

    def num_parameters(self) -> int:
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in self.layer_sizes)

    def to_metadata(self) -> dict:
        """String-only dict for a safetensors header."""
        return {
            "image_size": ",".join(map(str, self.image_size)),
            "hidden_sizes": ",".join(map(str, self.hidden_sizes)),
            "num_classes": str(self.num_classes),
            "activation": self.activation,
            "output_activation": self.output_activation or "none",
        }

    def to_dict(self) -> dict:
        """The spec for JSON (METRICS.json): numbers as numbers, sizes as lists, no output activation as null."""
        return {
            "image_size": list(self.image_size),
            "hidden_sizes": list(self.hidden_sizes),
            "num_classes": self.num_classes,
            "activation": self.activation,
            "output_activation": self.output_activation,
        }

    @classmethod
    def from_metadata(cls, meta: dict) -> ModelSpec:
        out = meta.get("output_activation", "none")
        return cls(
            image_size=tuple(int(s) for s in meta["image_size"].split(",")),
            hidden_sizes=tuple(int(s) for s in meta["hidden_sizes"].split(",")),
            num_classes=int(meta["num_classes"]),
            activation=meta["activation"],
            output_activation=None if out == "none" else out,
        )


DEFAULT_SPEC = ModelSpec()

# (784+1)*512 + (512+1)*512 + (512+1)*10
TUTORIAL_PARAMETER_COUNT = 669_706


def checkpoint_keys(spec: ModelSpec = DEFAULT_SPEC) -> tuple[str, ...]:
    """The canonical keys, i.e. the tutorial class's state_dict keys, in order."""
    return tuple(f"linear_relu_stack.{i}.{kind}" for i in spec.linear_indices for kind in ("weight", "bias"))


def checkpoint_shapes(spec: ModelSpec = DEFAULT_SPEC) -> dict:
    """Canonical key -> torch-layout shape: weight is [out, in], bias is [out]."""
    shapes = {}
    for i, (fan_in, fan_out) in zip(spec.linear_indices, spec.layer_sizes, strict=True):
        shapes[f"linear_relu_stack.{i}.weight"] = (fan_out, fan_in)
        shapes[f"linear_relu_stack.{i}.bias"] = (fan_out,)
    return shapes


def flax_param_path(key: str) -> tuple[str, str, str]:
    """Canonical key -> path in the Flax param tree.

    'linear_relu_stack.2.weight' -> ('linear_relu_stack', 'layers_2', 'kernel'); the kernel is the
    transposed weight ([in, out] instead of [out, in]). Flax's nn.Sequential names its i-th layer
    'layers_i', so the torch index survives visibly.
    """
    stack, index, kind = key.split(".")
    return (stack, f"layers_{index}", {"weight": "kernel", "bias": "bias"}[kind])


def nnx_param_path(key: str) -> tuple[str, str, int, str]:
    """Canonical key -> path in the Flax NNX state.

    'linear_relu_stack.2.weight' -> ('linear_relu_stack', 'layers', 2, 'kernel'); nnx.Sequential keeps
    its entries in the list `layers`, so the torch index survives as an integer path entry. The
    kernel is the transposed weight, as in linen.
    """
    stack, index, kind = key.split(".")
    return (stack, "layers", int(index), {"weight": "kernel", "bias": "bias"}[kind])
