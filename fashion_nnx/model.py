"""The tutorial's Fashion-MNIST MLP in Flax NNX, plus its activations and device choice.

Mirrors fashion_torch/model.py and fashion_flax/model.py name for name; a difference is commented.
The activations, the device choice, the matmul precision and the init law are fashion_flax's own:
the two Flax twins are one framework family (the same JAX functions, the same process-wide JAX
config), so they share one copy of these and differ only in how the network holds its weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fashion_common.errors import check_input
from fashion_common.spec import ACTIVATION_DISPLAY, DEFAULT_SPEC, ModelSpec
from fashion_common.text import format_summary_rows
from fashion_flax.model import (
    ACTIVATION_FUNCTIONS,
    binary_step,
    get_device,
    relu,
    resolve_device,
    set_matmul_precision,
    set_threads,
    sigmoid,
    softmax,
    tanh,
    torch_uniform,
)

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "NeuralNetwork",
    "binary_step",
    "count_parameters",
    "create_model",
    "get_device",
    "relu",
    "resolve_device",
    "set_matmul_precision",
    "set_threads",
    "sigmoid",
    "softmax",
    "summary",
    "tanh",
    "torch_uniform",
]

# ----------------------------------------------------------------------------- the network


class NeuralNetwork(nnx.Module):
    """Flatten -> Linear(784, 512) -> ReLU -> Linear(512, 512) -> ReLU -> Linear(512, 10); returns logits.

    State: linear_relu_stack.layers.{0,2,4}.{kernel,bias}. nnx.Sequential keeps its entries in a
    list `layers`, so 'linear_relu_stack.2.weight' in torch is ('linear_relu_stack', 'layers', 2,
    'kernel') here, transposed ([in, out] instead of [out, in]), as in the linen twin.
    Like torch (and unlike linen) the module holds its own weights: `model(x)` needs nothing else.
    """

    def __init__(self, spec: ModelSpec = DEFAULT_SPEC, init_scheme: str = "torch", *, rngs: nnx.Rngs):
        self.spec = spec  # static: a frozen dataclass, part of the graphdef
        layers = []
        for i, (fan_in, fan_out) in enumerate(spec.layer_sizes):
            if i:
                layers.append(ACTIVATION_FUNCTIONS[spec.activation])
            if init_scheme == "torch":  # both twins start from torch.nn.Linear's law
                linear = nnx.Linear(
                    fan_in, fan_out, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in), rngs=rngs
                )
            elif init_scheme == "flax":  # Flax's own defaults: lecun_normal kernels, zero biases
                linear = nnx.Linear(fan_in, fan_out, rngs=rngs)
            else:
                raise ValueError(f"unknown init_scheme {init_scheme!r}; choose torch or flax")
            layers.append(linear)
        if spec.output_activation is not None:
            layers.append(ACTIVATION_FUNCTIONS[spec.output_activation])
        self.linear_relu_stack = nnx.Sequential(*layers)

    def flatten(self, x):
        # torch's nn.Flatten(): keep dim 0, merge the rest. The size is spelled out, not -1, so an empty
        # batch (0, 28, 28) flattens to (0, 784) as in torch (-1 cannot be inferred from zero elements).
        return x.reshape((x.shape[0], math.prod(x.shape[1:])))

    def _as_input(self, x):
        """The shared input rule, as in the linen twin: a JAX array, or anything np.asarray takes, then check_input.

        The dtype is checked before JAX sees the input, since JAX (x64 off) would turn int64 into
        int32 and float64 into float32, and the message must name the dtype the caller gave.
        """
        if not isinstance(x, jax.Array):
            x = np.asarray(x)
        check_input(x.shape, str(x.dtype), jnp.issubdtype(x.dtype, jnp.floating), self.spec.image_size)
        return x

    def __call__(self, x):
        x = self._as_input(x)
        x = self.flatten(x.astype(jnp.float32))  # (N, 784); float64/16 inputs are cast, as in the other twins
        logits = self.linear_relu_stack(x)  # (N, 10)
        return logits

    def layer_outputs(self, x) -> dict[str, jax.Array]:
        """Every intermediate, keyed by stack position: {"flatten": (N, 784), "0": (N, 512), ..., "4": (N, 10)}."""
        x = self._as_input(x)
        outputs = {"flatten": self.flatten(x.astype(jnp.float32))}
        h = outputs["flatten"]
        for i, layer in enumerate(self.linear_relu_stack.layers):
            h = layer(h)
            outputs[str(i)] = h
        return outputs


def create_model(
    spec: ModelSpec = DEFAULT_SPEC, seed: int | None = 0, device=None, init_scheme: str = "torch"
) -> NeuralNetwork:
    """A fresh NeuralNetwork holding its weights; the seed names the init key, so init is repeatable.

    The key is the linen twin's (`PRNGKey(seed)`), but NNX draws one key per parameter from `nnx.Rngs`
    in construction order where linen folds in the module path, so the same seed gives the same law,
    not the same numbers, in the two Flax twins.
    Built eagerly, the NNX way: after the first call JAX's per-op caches make a rebuild ~10 ms.
    """
    init_rng = jax.random.PRNGKey(0 if seed is None else seed)  # the one key init needs: nothing else draws
    model = NeuralNetwork(spec, init_scheme, rngs=nnx.Rngs(params=init_rng))
    if device is not None:
        nnx.update(model, jax.device_put(nnx.state(model), device))
    return model


def count_parameters(model) -> int:
    """Parameters of an NNX model (or of a param State / pytree, e.g. its gradients)."""
    tree = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


def summary(model: NeuralNetwork, batch_size: int = 1) -> str:
    """A torch-style structure print, then a table of each layer's output shape and parameter count."""
    outputs = model.layer_outputs(jnp.zeros((batch_size, *model.spec.image_size)))
    lines = ["NeuralNetwork(", "  (flatten): reshape(N, -1)", "  (linear_relu_stack): Sequential("]
    rows = [("flatten", "Flatten", outputs["flatten"].shape, 0)]
    for i, layer in enumerate(model.linear_relu_stack.layers):
        if isinstance(layer, nnx.Linear):
            bias = layer.bias is not None
            lines.append(
                f"    (layers.{i}): Linear(in_features={layer.in_features}, out_features={layer.out_features}, "
                f"bias={bias})"
            )
            rows.append((f"linear_relu_stack.layers.{i}", "Linear", outputs[str(i)].shape, count_parameters(layer)))
        else:
            name = ACTIVATION_DISPLAY[model.spec.activation_at(i)]
            lines.append(f"    (layers.{i}): {name}()")
            rows.append((f"linear_relu_stack.layers.{i}", name, outputs[str(i)].shape, 0))
    lines += ["  )", ")"]
    return "\n".join(lines) + "\n" + format_summary_rows(rows)
