"""One numpy-in, numpy-out face per twin, so each shared test runs unchanged against all three.

Keras 3 runs one test suite against every backend behind a `backend` fixture; this is that idea
for the two twins. Every method takes and returns numpy arrays, and parameters and gradients come
back in the canonical layout: keyed `linear_relu_stack.{0,2,4}.{weight,bias}`, weight [out, in].
The adapters add no maths of their own: they call the twin's public API and convert.

A net is whatever the twin's API hands out: the nn.Module in torch, a FlaxNet (module, params) in
flax, because Flax linen keeps the params apart from the module, and the nnx.Module in nnx.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fashion_common.metrics import max_abs_diff  # noqa: F401  (the tests import it from here)
from fashion_common.spec import BACKENDS, DEFAULT_SPEC, ModelSpec

BACKEND_NAMES = BACKENDS  # fashion_common.spec: every twin, nnx included


def image_batch(n: int, seed: int = 0, layout: str = "N,28,28") -> np.ndarray:
    """A Fashion-MNIST-like float32 batch: about half the pixels are background 0, the rest in [0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28), dtype=np.float32)
    x[rng.random((n, 28, 28)) < 0.5] = 0.0
    return x if layout == "N,28,28" else x[:, None]  # (N, 28, 28) or (N, 1, 28, 28)


def label_batch(n: int, seed: int = 0) -> np.ndarray:
    """n labels in 0..9, int64 as torch's cross_entropy wants."""
    return np.random.default_rng([seed, 1]).integers(0, 10, n)


class TorchBackend:
    """fashion_torch behind the shared interface."""

    name = "torch"

    def __init__(self, device: str = "cpu"):
        import torch

        import fashion_torch

        self.torch = torch
        self.module = fashion_torch
        self.device = device

    # ------------------------------------------------------------------ nets and weights
    def init(self, seed: int = 0, spec: ModelSpec = DEFAULT_SPEC):
        """A fresh model every time: torch modules are mutable (grads), and building one is cheap."""
        return self.module.create_model(spec, seed=seed, device=self.device)

    def from_state_dict(self, state, spec: ModelSpec = DEFAULT_SPEC):
        return self.module.from_state_dict(state, spec, device=self.device)

    def to_state_dict(self, net) -> dict[str, np.ndarray]:
        return self.module.to_state_dict(net)

    def spec_of(self, net) -> ModelSpec:
        return net.spec

    def count_parameters(self, net) -> int:
        return self.module.count_parameters(net)

    def native_parameters(self, net) -> dict[str, tuple[int, ...]]:
        """named_parameters() as name -> shape."""
        return {name: tuple(p.shape) for name, p in net.named_parameters()}

    def summary(self, net) -> str:
        return self.module.summary(net)

    # ------------------------------------------------------------------ compute
    def _tensor(self, x):
        return self.torch.tensor(np.asarray(x), device=self.device)  # copies: keeps the caller's array untouched

    def forward(self, net, x):
        """The twin's own call on a numpy input; bad inputs raise the twin's own error."""
        with self.torch.no_grad():
            return net(self._tensor(x))

    def logits(self, net, x) -> np.ndarray:
        return self.forward(net, x).cpu().numpy()

    def layer_outputs(self, net, x) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            outputs = net.layer_outputs(self._tensor(x))
        return {k: v.cpu().numpy() for k, v in outputs.items()}

    def loss_and_grads(self, net, x, labels) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Mean cross-entropy, its gradient w.r.t. the input, and w.r.t. every parameter (canonical keys)."""
        F = self.torch.nn.functional
        net.zero_grad(set_to_none=True)
        x = self._tensor(x).requires_grad_(True)
        loss = F.cross_entropy(net(x), self._tensor(labels))
        loss.backward()
        grads = {name: p.grad.cpu().numpy() for name, p in net.named_parameters()}  # torch layout is canonical
        return float(loss.item()), x.grad.cpu().numpy(), grads

    def activation(self, name: str, x, **kwargs) -> np.ndarray:
        return getattr(self.module, name)(self._tensor(x), **kwargs).cpu().numpy()

    def activation_vjp(self, name: str, x, cotangent, **kwargs) -> np.ndarray:
        """cotangent^T d act(x) / dx, the gradient backward() hands to x."""
        x = self._tensor(x).requires_grad_(True)
        getattr(self.module, name)(x, **kwargs).backward(self._tensor(cotangent))
        return x.grad.cpu().numpy()

    # ------------------------------------------------------------------ checkpoints and precision
    def save(self, net, path, metadata: dict | None = None):
        return self.module.save_checkpoint(net, path, metadata)

    def load(self, path, spec: ModelSpec | None = None):
        return self.module.load_checkpoint(path, device=self.device, spec=spec)

    def set_matmul_precision(self, precision: str) -> None:
        self.module.set_matmul_precision(precision)


@dataclasses.dataclass
class FlaxNet:
    """A Flax module and its variables, the pair create_model returns (load_checkpoint's bound module, unbound)."""

    model: Any
    params: Any


class FlaxBackend:
    """fashion_flax behind the shared interface; the compute paths are jitted once per spec."""

    name = "flax"

    def __init__(self, device=None):
        import jax
        import jax.numpy as jnp
        import optax

        import fashion_flax

        self.jax, self.jnp, self.optax = jax, jnp, optax
        self.module = fashion_flax
        self.device = device  # None: JAX's default device
        self._jitted: dict[tuple[Any, str], Any] = {}

    # ------------------------------------------------------------------ nets and weights
    def init(self, seed: int = 0, spec: ModelSpec = DEFAULT_SPEC, init_scheme: str = "torch") -> FlaxNet:
        """create_model's (module, variables), built afresh (its jitted init is compiled once per spec)."""
        return FlaxNet(*self.module.create_model(spec, seed=seed, device=self.device, init_scheme=init_scheme))

    def from_state_dict(self, state, spec: ModelSpec = DEFAULT_SPEC) -> FlaxNet:
        return FlaxNet(self.module.NeuralNetwork(spec), self.module.from_state_dict(state, spec, device=self.device))

    def to_state_dict(self, net: FlaxNet) -> dict[str, np.ndarray]:
        return self.module.to_state_dict(net.params, net.model.spec)

    def spec_of(self, net: FlaxNet) -> ModelSpec:
        return net.model.spec

    def count_parameters(self, net: FlaxNet) -> int:
        return self.module.count_parameters(net.params)

    def native_parameters(self, net: FlaxNet) -> dict[tuple[str, ...], tuple[int, ...]]:
        """Param tree paths under 'params' -> shape, e.g. ('linear_relu_stack', 'layers_0', 'kernel')."""
        leaves = self.jax.tree_util.tree_leaves_with_path(net.params["params"])
        return {tuple(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in leaves}

    def summary(self, net: FlaxNet) -> str:
        return self.module.summary(net.model, net.params)

    # ------------------------------------------------------------------ compute
    def _array(self, x):
        x = self.jnp.asarray(x)
        return self.jax.device_put(x, self.device) if self.device is not None else x

    def _jit(self, model, what: str):
        """One jitted function per (module, what), reused by every test in the session."""
        key = (model, what)
        if key not in self._jitted:
            jax, optax = self.jax, self.optax
            if what == "logits":

                def fn(params, x):
                    return model.apply(params, x)

            elif what == "layer_outputs":

                def fn(params, x):
                    return model.apply(params, x, method=type(model).layer_outputs)

            elif what == "loss_and_grads":

                def loss_fn(params, x, labels):
                    logits = model.apply(params, x)  # (N, 10)
                    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

                fn = jax.value_and_grad(loss_fn, argnums=(0, 1))
            else:
                raise KeyError(what)
            self._jitted[key] = jax.jit(fn)
        return self._jitted[key]

    def forward(self, net: FlaxNet, x):
        """The twin's own call on the numpy input as given (no jit: jit would recast int64 to int32)."""
        return net.model.apply(net.params, x)

    def logits(self, net: FlaxNet, x) -> np.ndarray:
        return np.asarray(self._jit(net.model, "logits")(net.params, self._array(x)))

    def layer_outputs(self, net: FlaxNet, x) -> dict[str, np.ndarray]:
        outputs = self._jit(net.model, "layer_outputs")(net.params, self._array(x))
        order = ["flatten"] + sorted(
            (k for k in outputs if k != "flatten"), key=int
        )  # jit returns dict keys sorted as strings
        return {k: np.asarray(outputs[k]) for k in order}

    def loss_and_grads(self, net: FlaxNet, x, labels) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Mean cross-entropy, its gradient w.r.t. the input, and w.r.t. every parameter (canonical keys)."""
        fn = self._jit(net.model, "loss_and_grads")
        loss, (param_grads, dx) = fn(net.params, self._array(x), self._array(labels.astype(np.int32)))
        grads = self.module.to_state_dict(param_grads, net.model.spec)  # kernels transposed to [out, in]
        return float(loss), np.asarray(dx), grads

    def activation(self, name: str, x, **kwargs) -> np.ndarray:
        return np.asarray(getattr(self.module, name)(self._array(x), **kwargs))

    def activation_vjp(self, name: str, x, cotangent, **kwargs) -> np.ndarray:
        """cotangent^T d act(x) / dx, from jax.vjp."""
        fn = getattr(self.module, name)
        _, vjp = self.jax.vjp(lambda v: fn(v, **kwargs), self._array(x))
        (dx,) = vjp(self._array(cotangent))
        return np.asarray(dx)

    # ------------------------------------------------------------------ checkpoints and precision
    def save(self, net: FlaxNet, path, metadata: dict | None = None):
        return self.module.save_checkpoint(net.params, path, net.model.spec, metadata)

    def load(self, path, spec: ModelSpec | None = None) -> FlaxNet:
        return FlaxNet(*self.module.load_checkpoint(path, device=self.device, spec=spec).unbind())

    def set_matmul_precision(self, precision: str) -> None:
        self.module.set_matmul_precision(precision)


class NnxBackend:
    """fashion_nnx behind the shared interface; the compute paths are nnx.jit-ted once per backend.

    No init cache, unlike FlaxBackend: an NNX model is mutable (as torch's is), and an eager build
    costs ~10 ms once JAX has compiled its ops, so every init is fresh.
    """

    name = "nnx"

    def __init__(self, device=None):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        import fashion_nnx

        self.jax, self.jnp, self.optax, self.nnx = jax, jnp, optax, nnx
        self.module = fashion_nnx
        self.device = device  # None: JAX's default device

        def loss_fn(model, x, labels):
            logits = model(x)  # (N, 10)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        # nnx.jit caches its compiled function per graphdef, so one compile per spec for the session.
        self._logits = nnx.jit(lambda model, x: model(x))
        self._layer_outputs = nnx.jit(lambda model, x: model.layer_outputs(x))
        self._loss_and_grads = nnx.jit(nnx.value_and_grad(loss_fn, argnums=(0, 1)))

    # ------------------------------------------------------------------ nets and weights
    def init(self, seed: int = 0, spec: ModelSpec = DEFAULT_SPEC, init_scheme: str = "torch"):
        """create_model's nnx.Module, built afresh every time."""
        return self.module.create_model(spec, seed=seed, device=self.device, init_scheme=init_scheme)

    def from_state_dict(self, state, spec: ModelSpec = DEFAULT_SPEC):
        return self.module.from_state_dict(state, spec, device=self.device)

    def to_state_dict(self, net) -> dict[str, np.ndarray]:
        return self.module.to_state_dict(net)

    def spec_of(self, net) -> ModelSpec:
        return net.spec

    def count_parameters(self, net) -> int:
        return self.module.count_parameters(net)

    def native_parameters(self, net) -> dict[tuple, tuple[int, ...]]:
        """Param state paths -> shape, e.g. ('linear_relu_stack', 'layers', 0, 'kernel')."""
        flat = self.nnx.to_flat_state(self.nnx.state(net, self.nnx.Param))
        return {tuple(path): tuple(variable.shape) for path, variable in flat}

    def summary(self, net) -> str:
        return self.module.summary(net)

    # ------------------------------------------------------------------ compute
    def _array(self, x):
        x = self.jnp.asarray(x)
        return self.jax.device_put(x, self.device) if self.device is not None else x

    def forward(self, net, x):
        """The twin's own call on the numpy input as given (no jit: jit would recast int64 to int32)."""
        return net(x)

    def logits(self, net, x) -> np.ndarray:
        return np.asarray(self._logits(net, self._array(x)))

    def layer_outputs(self, net, x) -> dict[str, np.ndarray]:
        outputs = self._layer_outputs(net, self._array(x))
        order = ["flatten"] + sorted(
            (k for k in outputs if k != "flatten"), key=int
        )  # jit returns dict keys sorted as strings
        return {k: np.asarray(outputs[k]) for k in order}

    def loss_and_grads(self, net, x, labels) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Mean cross-entropy, its gradient w.r.t. the input, and w.r.t. every parameter (canonical keys)."""
        loss, (param_grads, dx) = self._loss_and_grads(net, self._array(x), self._array(labels.astype(np.int32)))
        grads = self.module.to_state_dict(param_grads, net.spec)  # a param State; kernels transposed to [out, in]
        return float(loss), np.asarray(dx), grads

    def activation(self, name: str, x, **kwargs) -> np.ndarray:
        return np.asarray(getattr(self.module, name)(self._array(x), **kwargs))

    def activation_vjp(self, name: str, x, cotangent, **kwargs) -> np.ndarray:
        """cotangent^T d act(x) / dx, from jax.vjp."""
        fn = getattr(self.module, name)
        _, vjp = self.jax.vjp(lambda v: fn(v, **kwargs), self._array(x))
        (dx,) = vjp(self._array(cotangent))
        return np.asarray(dx)

    # ------------------------------------------------------------------ checkpoints and precision
    def save(self, net, path, metadata: dict | None = None):
        return self.module.save_checkpoint(net, path, metadata)

    def load(self, path, spec: ModelSpec | None = None):
        return self.module.load_checkpoint(path, device=self.device, spec=spec)

    def set_matmul_precision(self, precision: str) -> None:
        self.module.set_matmul_precision(precision)


_CPU_BACKENDS: dict[str, Any] = {}


def get_backend(name: str):
    """The session's CPU adapter for `name` ("torch", "flax" or "nnx"), built once."""
    if name not in _CPU_BACKENDS:
        _CPU_BACKENDS[name] = {"torch": TorchBackend, "flax": FlaxBackend, "nnx": NnxBackend}[name]()
    return _CPU_BACKENDS[name]
