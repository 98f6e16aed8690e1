"""Parity figures: the two twins on the same weights and inputs, compared as max |diff|.

Forward (logits and each layer), and backward (the loss gradient with respect to the input and
every parameter, in the canonical torch layout), plus the activation grid.
"""

from __future__ import annotations

import numpy as np

from fashion_common.metrics import max_abs_diff
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_keys
from fashion_compare import set_matmul_precision

# Points where activations misbehave if written naively: signed zero, saturation, overflow, inf, NaN.
ACTIVATION_GRID = np.array(
    [-np.inf, -1e4, -20.0, -1.0, -1e-7, -0.0, 0.0, 1e-7, 1.0, 20.0, 1e4, np.inf, np.nan], dtype=np.float32
)
ACTIVATION_NAMES = ("binary_step", "sigmoid", "tanh", "relu", "softmax")
# softmax gets rows of its own: over ACTIVATION_GRID's finite points the 1e4 takes all the mass, every other output
# is exactly 0 and so is its gradient, in any implementation. Each row here spreads its mass (every output 0.006 to
# 0.5), and the same row shifted by +-1e4 is where a softmax that does not subtract the max overflows or underflows.
SOFTMAX_BASE = np.array([-2.5, -1.0, -1e-7, 0.0, 1e-7, 1.0, 2.0], dtype=np.float32)
SOFTMAX_ROWS = np.stack([SOFTMAX_BASE, SOFTMAX_BASE + 1e4, SOFTMAX_BASE - 1e4]).astype(np.float32)  # (3, 7)


def torch_figures(model, x: np.ndarray, y: np.ndarray) -> dict:
    """Layer outputs, logits, loss, and gradients (input and every canonical key) of the torch twin."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    xt = torch.tensor(x, device=device, requires_grad=True)
    model.zero_grad(set_to_none=True)
    outputs = model.layer_outputs(xt)
    last = str(model.spec.stack_length - 1)
    loss = F.cross_entropy(outputs[last], torch.as_tensor(y, dtype=torch.int64, device=device))
    loss.backward()
    named = dict(model.named_parameters())
    return {
        "layers": {k: v.detach().cpu().numpy() for k, v in outputs.items()},
        "logits": outputs[last].detach().cpu().numpy(),
        "loss": loss.item(),
        "grads": {
            "input": xt.grad.cpu().numpy(),
            **{k: named[k].grad.cpu().numpy() for k in checkpoint_keys(model.spec)},
        },
    }


def flax_figures(model, params, x: np.ndarray, y: np.ndarray) -> dict:
    """The same figures from the flax twin, gradients transposed into the canonical layout."""
    import jax
    import jax.numpy as jnp
    import optax

    import fashion_flax

    def loss_of(params, x):
        outputs = model.apply(params, x, method=type(model).layer_outputs)
        logits = outputs[str(model.spec.stack_length - 1)]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean(), outputs

    (loss, outputs), (g_params, g_x) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(params, jnp.asarray(x))
    last = str(model.spec.stack_length - 1)
    return {
        "layers": {k: np.asarray(v) for k, v in outputs.items()},
        "logits": np.asarray(outputs[last]),
        "loss": float(loss),
        "grads": {"input": np.asarray(g_x), **fashion_flax.to_state_dict(g_params, model.spec)},
    }


def nnx_figures(model, x: np.ndarray, y: np.ndarray) -> dict:
    """The same figures from the NNX twin (an nnx.Module), gradients transposed into the canonical layout."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import fashion_nnx

    def loss_of(model, x):
        outputs = model.layer_outputs(x)
        logits = outputs[str(model.spec.stack_length - 1)]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean(), outputs

    grad_fn = nnx.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)
    (loss, outputs), (g_params, g_x) = grad_fn(model, jnp.asarray(x))  # g_params: a param State
    last = str(model.spec.stack_length - 1)
    return {
        "layers": {k: np.asarray(v) for k, v in outputs.items()},
        "logits": np.asarray(outputs[last]),
        "loss": float(loss),
        "grads": {"input": np.asarray(g_x), **fashion_nnx.to_state_dict(g_params, model.spec)},
    }


def compare_figures(t: dict, f: dict) -> dict:
    """max |diff| of everything the two figure dicts hold."""
    return {
        "logits": max_abs_diff(t["logits"], f["logits"]),
        "loss": abs(t["loss"] - f["loss"]),
        "layers": {k: max_abs_diff(t["layers"][k], f["layers"][k]) for k in t["layers"]},
        "grads": {k: max_abs_diff(t["grads"][k], f["grads"][k]) for k in t["grads"]},
    }


def kink_examples(t: dict, f: dict, spec: ModelSpec = DEFAULT_SPEC) -> list:
    """Examples with a pre-activation that is > 0 in one twin only, at a relu or binary_step.

    The derivative jumps at 0, so a value that rounds to 0.0 in one twin and to 3e-9 in the other
    moves that example's gradient by what flows through the unit (~1e-5 to 1e-4), not by rounding.
    """
    kinked = ("relu", "binary_step")
    positions = list(spec.linear_indices[:-1]) if spec.activation in kinked else []
    if spec.output_activation in kinked:
        positions.append(spec.linear_indices[-1])
    flipped = np.zeros(len(t["logits"]), dtype=bool)
    for i in positions:
        pre_t, pre_f = t["layers"][str(i)], f["layers"][str(i)]  # (N, fan_out) Linear outputs
        flipped |= ((pre_t > 0) != (pre_f > 0)).any(axis=1)
    return np.flatnonzero(flipped).tolist()


def parity(
    state_dict: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    precision: str = "highest",
    device: str = "cpu",
    spec: ModelSpec = DEFAULT_SPEC,
    twin: str = "flax",
) -> dict:
    """Load one canonical state_dict into torch and a JAX twin ("flax" or "nnx"); compare forward and backward."""
    import fashion_torch

    set_matmul_precision(precision)
    t_model = fashion_torch.from_state_dict(state_dict, spec, fashion_torch.resolve_device(device))
    if twin == "nnx":
        import fashion_nnx

        f = nnx_figures(fashion_nnx.from_state_dict(state_dict, spec, fashion_nnx.resolve_device(device)), x, y)
    else:
        import fashion_flax

        f_params = fashion_flax.from_state_dict(state_dict, spec, fashion_flax.resolve_device(device))
        f = flax_figures(fashion_flax.NeuralNetwork(spec), f_params, x, y)
    t = torch_figures(t_model, x, y)
    result = compare_figures(t, f)
    result["kink_examples"] = kink_examples(t, f, spec)
    result["precision"] = precision
    result["max_layer"] = max(result["layers"].values())
    result["max_grad"] = max(result["grads"].values())
    return result


def activation_grid(dim: int = -1) -> dict:
    """Each tutorial activation on ACTIVATION_GRID in both twins: values, gradients and their max |diff|."""
    import jax
    import jax.numpy as jnp
    import torch

    import fashion_flax
    import fashion_torch

    out = {"inputs": ACTIVATION_GRID.tolist(), "functions": {}}
    for name in ACTIVATION_NAMES:
        t_fn, f_fn = getattr(fashion_torch, name), getattr(fashion_flax, name)
        # softmax runs over rows of its own (see SOFTMAX_ROWS), each row one softmax
        x_np = SOFTMAX_ROWS if name == "softmax" else ACTIVATION_GRID
        xt = torch.tensor(x_np, requires_grad=True)
        yt = t_fn(xt, dim) if name == "softmax" else t_fn(xt)
        # gradient of sum(y * w) with fixed weights w, so softmax's gradient is not identically zero
        w = np.linspace(-1.0, 1.0, x_np.shape[-1]).astype(np.float32) * np.ones_like(x_np)  # x_np's shape
        (yt * torch.tensor(w)).sum().backward()
        # the closures bind this iteration's f_fn, f_call and w as defaults
        f_call = (lambda v, f_fn=f_fn: f_fn(v, dim)) if name == "softmax" else f_fn
        yf = np.asarray(f_call(jnp.asarray(x_np)))
        gf = np.asarray(jax.grad(lambda v, f_call=f_call, w=w: (f_call(v) * jnp.asarray(w)).sum())(jnp.asarray(x_np)))
        out["functions"][name] = {
            "x": x_np.tolist(),
            "torch": yt.detach().numpy().tolist(),
            "flax": yf.tolist(),
            "grad_torch": xt.grad.numpy().tolist(),
            "grad_flax": gf.tolist(),
            "value_diff": max_abs_diff(yt.detach().numpy(), yf),
            "grad_diff": max_abs_diff(xt.grad.numpy(), gf),
        }
    return out
