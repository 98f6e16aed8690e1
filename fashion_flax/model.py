"""The tutorial's Fashion-MNIST MLP in Flax linen, plus its activations and device choice.

Mirrors fashion_torch/model.py name for name; a difference between the two is commented.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from fashion_common.errors import DeviceError, check_activation_input, check_dim, check_input, check_seed
from fashion_common.inputs import to_numpy
from fashion_common.spec import ACTIVATION_DISPLAY, DEFAULT_SPEC, ModelSpec
from fashion_common.text import format_summary_rows

# ----------------------------------------------------------------------------- activations
# The tutorial's tour: binary step, sigmoid, tanh, ReLU and softmax, as plain functions.


# The shared rules (fashion_common/errors.py), the same in both twins: an integer, bool or complex
# input raises InputDtypeError (check_activation_input); softmax's dim must be an int in range
# (check_dim), else DimError. Floating inputs keep their dtype (float64 only with jax x64 on).
# The checks read static dtypes and shapes, so under jit they cost nothing at run time.


def _check(name: str, x):
    """x as an array JAX takes (a torch tensor or a list: converted, keeping a dtype JAX has), after the shared rule."""
    if isinstance(x, jax.Array | np.ndarray | np.generic) or jnp.isscalar(x):
        dtype = np.result_type(x) if not hasattr(x, "dtype") else x.dtype
        check_activation_input(name, str(np.dtype(dtype)), jnp.issubdtype(dtype, jnp.floating))
        return x
    array, dtype, floating = to_numpy(x)
    check_activation_input(name, dtype, floating)
    kind = getattr(jnp, dtype, None)
    return array.astype(kind) if dtype != str(array.dtype) and kind is not None else array


@jax.custom_jvp
def _binary_step(x):
    return jnp.where(jnp.isnan(x), x, (x >= 0).astype(x.dtype))


@_binary_step.defjvp
def _binary_step_jvp(primals, tangents):
    (x,), _ = primals, tangents
    return _binary_step(x), jnp.zeros_like(x)


def binary_step(x):
    """1 where x >= 0, else 0; NaN stays NaN; the gradient is 0 everywhere (not undefined)."""
    x = _check("binary_step", x)
    return _binary_step(jnp.asarray(x))


def sigmoid(x):
    x = _check("sigmoid", x)
    return jax.nn.sigmoid(x)  # stable for |x| large: no overflow to NaN at -1e4


def tanh(x):
    x = _check("tanh", x)
    return jnp.tanh(x)


@jax.custom_jvp
def _relu(x):
    return jnp.where(x < 0, jnp.zeros_like(x), x)  # keeps -0.0 and NaN as torch.relu does (jnp.maximum gives +0.0)


@_relu.defjvp
def _relu_jvp(primals, tangents):
    # torch's rule: the gradient is masked where x <= 0, so ReLU'(0) = 0 and a NaN input passes the
    # gradient on (jax.nn.relu masks where not x > 0, giving 0 at NaN: the twins would differ there)
    (x,), (t,) = primals, tangents
    return _relu(x), jnp.where(x <= 0, jnp.zeros_like(t), t)


def relu(x):
    x = _check("relu", x)
    return _relu(jnp.asarray(x))


def softmax(x, dim: int = -1):
    x = _check("softmax", x)
    x = jnp.asarray(x)
    dim = check_dim(dim, x.ndim)
    if x.ndim == 0:  # torch treats a 0-d input as 1-d: softmax of one value
        return jax.nn.softmax(x[None], axis=0)[0]
    return jax.nn.softmax(x, axis=dim)  # `dim`, not `axis`, to mirror torch.softmax; subtracts the max first


ACTIVATION_FUNCTIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "binary_step": binary_step}


# ----------------------------------------------------------------------------- device


def get_device() -> str:
    """A GPU if JAX has one, else "cpu" (mirrors torch's cuda -> mps -> cpu)."""
    return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"


def resolve_device(name: str = "auto") -> jax.Device:
    """Config device ("auto", "cpu", "gpu") -> jax.Device; "gpu" without one is a clear error."""
    if name == "auto":
        name = get_device()
    if name == "cpu":
        return jax.devices("cpu")[0]
    if name == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise DeviceError("--device gpu was asked for, but JAX sees no GPU device") from None
    raise ValueError(f"unknown device {name!r}; choose auto, cpu or gpu")


def set_matmul_precision(precision: str) -> None:
    """ "highest" (fp32: the parity mode) or "tf32" (JAX's GPU default, TensorFloat-32 matmuls)."""
    jax.config.update("jax_default_matmul_precision", {"highest": "highest", "tf32": "default"}[precision])


def set_threads(threads: int) -> int:
    """Ask XLA's CPU backend for `threads` intra-op threads; returns the count asked before (0: XLA's default).

    Unlike torch's, XLA's CPU thread pool is sized once, when JAX starts its backend (the first array
    or device query), from XLA_FLAGS: this sets them, and raises RuntimeError once the backend has
    started. Never called on import: a library keeps JAX's defaults unless asked.
    """
    from jax._src import xla_bridge  # the one public-enough probe of "backend started" (jax 0.4-0.10)

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("set_threads: JAX's CPU backend has started; set threads before the first array is made")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_THREAD_FLAGS)]
    previous = int(os.environ.get("FASHION_TWINS_XLA_THREADS", "0"))
    flags += [
        f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}",
        f"intra_op_parallelism_threads={threads}",
    ]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ["FASHION_TWINS_XLA_THREADS"] = str(threads)
    return previous


_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads")


# ----------------------------------------------------------------------------- the network


def torch_uniform(fan_in: int):
    """torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernel and bias alike."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NeuralNetwork(nn.Module):
    """Flatten -> Dense(512) -> ReLU -> Dense(512) -> ReLU -> Dense(10); returns logits.

    Params: linear_relu_stack/layers_{0,2,4}/{kernel,bias}. nn.Sequential names entry i
    'layers_i', so 'linear_relu_stack.2.weight' in torch is 'linear_relu_stack/layers_2/kernel'
    here, transposed ([in, out] instead of [out, in]).
    """

    spec: ModelSpec = DEFAULT_SPEC
    init_scheme: str = "torch"  # "torch": both twins start from the same law; "flax": lecun_normal / zeros

    def setup(self):
        layers = []
        for i, (fan_in, fan_out) in enumerate(self.spec.layer_sizes):
            if i:
                layers.append(ACTIVATION_FUNCTIONS[self.spec.activation])
            if self.init_scheme == "torch":
                dense = nn.Dense(fan_out, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in))
            elif self.init_scheme == "flax":
                dense = nn.Dense(fan_out)
            else:
                raise ValueError(f"unknown init_scheme {self.init_scheme!r}; choose torch or flax")
            layers.append(dense)
        if self.spec.output_activation is not None:
            layers.append(ACTIVATION_FUNCTIONS[self.spec.output_activation])
        self.linear_relu_stack = nn.Sequential(layers)

    def flatten(self, x):
        # torch's nn.Flatten(): keep dim 0, merge the rest. The size is spelled out, not -1, so an empty
        # batch (0, 28, 28) flattens to (0, 784) as in torch (-1 cannot be inferred from zero elements).
        return x.reshape((x.shape[0], math.prod(x.shape[1:])))

    def _as_input(self, x):
        """The shared input rule: a JAX array, or anything np.asarray takes, then check_input.

        Anything np.asarray takes: a NumPy batch, a CPU torch tensor.

        The dtype is checked before JAX sees the input, since JAX (x64 off) would turn int64 into
        int32 and float64 into float32, and the message must name the dtype the caller gave, as torch's does.
        """
        if not isinstance(x, jax.Array):  # numpy, a list, a torch tensor of any dtype (fashion_common.inputs)
            x, name, floating = to_numpy(x)
            check_input(x.shape, name, floating, self.spec.image_size)
            return x
        check_input(x.shape, str(x.dtype), jnp.issubdtype(x.dtype, jnp.floating), self.spec.image_size)
        return x

    def __call__(self, x):
        x = self._as_input(x)
        x = self.flatten(
            x.astype(jnp.float32)
        )  # (N, 784); float64/16 inputs are cast, as in the torch twin; (N, 1, 28, 28) flattens the same way
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


def create_model(spec: ModelSpec = DEFAULT_SPEC, seed: int | None = 0, device=None, init_scheme: str = "torch"):
    """A fresh NeuralNetwork and its params; the seed names the init key, so init is repeatable.

    Flax keeps params apart from the module, so this returns (model, params) where torch returns
    one module holding its parameters.
    """
    model = _shared_model(spec, init_scheme)
    seed = check_seed(seed)  # the torch twin's rule and words
    init_rng = jax.random.PRNGKey(0 if seed is None else seed)  # the one key init needs: nothing else draws
    params = _jitted_init(spec, init_scheme)(init_rng, jnp.zeros((1, *spec.image_size), jnp.float32))
    if device is not None:
        params = jax.device_put(params, device)
    return model, params


@functools.cache
def _shared_model(spec: ModelSpec, init_scheme: str) -> NeuralNetwork:
    """One module per spec: modules are immutable, and jit caches compare `model.apply` by the module's identity."""
    return NeuralNetwork(spec, init_scheme=init_scheme)


@functools.cache
def _jitted_init(spec: ModelSpec, init_scheme: str):
    """model.init compiled once per spec, not once per call."""
    return jax.jit(_shared_model(spec, init_scheme).init)


def count_parameters(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def summary(model: NeuralNetwork, params=None, batch_size: int = 1) -> str:
    """A torch-style structure print, then a table of each layer's output shape and parameter count.

    params: the variables; None for a bound model (load_checkpoint's), which carries its own.
    """
    if params is None:
        model, params = model.unbind()
    outputs = model.apply(params, jnp.zeros((batch_size, *model.spec.image_size)), method=NeuralNetwork.layer_outputs)
    stack = params["params"]["linear_relu_stack"]
    lines = ["NeuralNetwork(", "  (flatten): reshape(N, -1)", "  (linear_relu_stack): Sequential("]
    rows = [("flatten", "Flatten", outputs["flatten"].shape, 0)]
    for i in range(model.spec.stack_length):
        entry = stack.get(f"layers_{i}")
        if entry is not None:
            fan_in, fan_out = entry["kernel"].shape
            lines.append(f"    (layers_{i}): Dense(in_features={fan_in}, out_features={fan_out}, bias=True)")
            rows.append((f"linear_relu_stack.layers_{i}", "Dense", outputs[str(i)].shape, count_parameters(entry)))
        else:
            name = ACTIVATION_DISPLAY[model.spec.activation_at(i)]
            lines.append(f"    (layers_{i}): {name}()")
            rows.append((f"linear_relu_stack.layers_{i}", name, outputs[str(i)].shape, 0))
    lines += ["  )", ")"]
    return "\n".join(lines) + "\n" + format_summary_rows(rows)
