"""Training in all three twins: config and engines, learning, determinism, resume, crash safety, fused torch."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import warnings

import numpy as np
import pytest
from twin_data import real_data, separable_set

from fashion_common import checkpoint as canonical
from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.errors import CheckpointError, ConfigError
from fashion_common.spec import ACTIVATIONS, BACKENDS  # every twin, the NNX twin included


def twin(backend):
    """(package, train module) of a twin, imported only when its test runs."""
    return importlib.import_module(f"fashion_{backend}"), importlib.import_module(f"fashion_{backend}.train")


def final_weights(backend, state):
    pkg, _ = twin(backend)
    return pkg.to_state_dict(state.params) if backend == "flax" else pkg.to_state_dict(state.model)


# ----------------------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        TrainConfig().replace(epoch=3)
    with pytest.raises(ConfigError, match="'batch_size' must be an int"):
        TrainConfig().replace(batch_size="64")
    with pytest.raises(ConfigError, match="'epochs' must be an int"):
        TrainConfig(epochs=2.5)
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adam, adamw"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        TrainConfig(lr=float("nan"))


def test_default_config_is_the_documented_accuracy_recipe():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.optimizer, c.lr, c.schedule, c.label_smoothing) == (
        80,
        64,
        "adamw",
        5e-4,
        "cosine",
        0.1,
    )
    assert (c.weight_decay, c.augment_shift, c.val_size) == (5e-2, 1, 0)
    t = tutorial_config()
    assert (t.optimizer, t.lr, t.batch_size, t.momentum, t.schedule, t.label_smoothing) == (
        "sgd",
        1e-3,
        64,
        0.0,
        "constant",
        0.0,
    )
    assert t.augment_shift == 0  # the tutorial's recipe has no augmentation


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_schedule_starts_at_lr_passes_half_at_midpoint_and_ends_at_zero(backend):
    # flax's schedule is float32: 1e-7 relative is about one ulp
    rates = schedule_rates(backend, TrainConfig(lr=0.1, device="cpu"), 100)
    assert rates[0] == pytest.approx(0.1, rel=1e-7)
    assert rates[50] == pytest.approx(0.05, rel=1e-7)
    assert rates[100] == pytest.approx(0.0, abs=1e-9)
    assert (
        schedule_rates(backend, TrainConfig(lr=0.1, schedule="constant", device="cpu"), 100)
        == [pytest.approx(0.1, rel=1e-7)] * 101
    )


def schedule_rates(backend, config, total_steps):
    """The rate each twin's own schedule object gives at steps 0..total_steps.

    torch: the rate after i scheduler.step() calls.
    """
    _, train = twin(backend)
    if backend in ("flax", "nnx"):
        schedule = train.make_schedule(config, total_steps)
        return [float(schedule(i)) for i in range(total_steps + 1)]
    state = train.create_train_state(config, total_steps=total_steps)
    rates = []
    with warnings.catch_warnings():  # no optimizer.step() here, which torch warns about
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(total_steps + 1):
            rates.append(state.scheduler.get_last_lr()[0])
            state.scheduler.step()
    return rates


def test_the_engine_is_a_torch_argument_not_a_shared_config_field():
    import inspect

    _, torch_train = twin("torch")
    _, flax_train = twin("flax")
    assert "engine" not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ConfigError, match="unknown config key 'engine'"):
        TrainConfig().replace(engine="eager")
    assert "engine" in inspect.signature(torch_train.create_train_state).parameters
    assert "engine" not in inspect.signature(flax_train.create_train_state).parameters
    assert "engine" not in inspect.signature(twin("nnx")[1].create_train_state).parameters
    with pytest.raises(ConfigError, match="engine must be one of auto, eager, compile, cuda_graph, fused"):
        torch_train.create_train_state(TrainConfig(device="cpu"), engine="bogus")


def test_the_cli_engine_choices_are_the_torch_twins_engines():
    from fashion_twins.cli.train import TORCH_ENGINES

    _, train = twin("torch")
    assert TORCH_ENGINES == train.ENGINES


def test_torch_refuses_cuda_graph_on_the_cpu_and_fused_with_an_output_activation():
    from fashion_common.spec import ModelSpec

    _, train = twin("torch")
    with pytest.raises(ConfigError, match="engine cuda_graph needs a CUDA device, not cpu"):
        train.create_train_state(TrainConfig(device="cpu"), engine="cuda_graph")
    with pytest.raises(ConfigError, match="engine fused .* and no output activation"):
        train.create_train_state(TrainConfig(device="cpu"), ModelSpec(output_activation="relu"), engine="fused")


def test_torch_engine_auto_is_eager_on_the_cpu_and_never_the_hand_written_step():
    _, train = twin("torch")
    assert train.create_train_state(TrainConfig(device="cpu")).engine == "eager"
    assert "fused" not in train.AUTO_ENGINE.values()


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_twin_learns_a_trivially_separable_set_perfectly(backend):
    _, train = twin(backend)
    data = separable_set(n_per_class=20)
    config = TrainConfig(epochs=15, batch_size=20, optimizer="adam", lr=3e-3, schedule="constant", device="cpu")
    _, metrics = train.train_and_evaluate(config, data, quiet=True, log=lambda line: None)
    assert metrics["epochs"][-1]["test_accuracy"] == 1.0
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]


@pytest.mark.data
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_epoch_on_a_slice_of_the_real_data_learns_and_logs_one_line(backend):
    _, train = twin(backend)
    lines = []
    config = TrainConfig(epochs=1, limit_train=6400, limit_test=2000, device="cpu")
    _, metrics = train.train_and_evaluate(config, real_data(), quiet=True, log=lines.append)
    row = metrics["epochs"][0]
    # 50 AdamW steps reach ~75 % on this slice; 10 classes at chance would be 10 %
    assert row["test_accuracy"] > 0.65
    assert 0 < row["test_loss"] < math.log(10)
    assert len(lines) == 1 and lines[0].startswith(f"[{backend}] epoch   1/1  train_loss ")


def matmul_precision_now(backend: str) -> str:
    """The process-wide float32 matmul precision the twin's framework holds, as TrainConfig.precision names it."""
    if backend == "torch":
        import torch

        return {"highest": "highest", "high": "tf32"}[torch.get_float32_matmul_precision()]
    import jax

    return {"highest": "highest", "default": "tf32"}[jax.config.jax_default_matmul_precision]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_twin_trains_at_the_configs_matmul_precision_highest_by_default_and_records_it(backend):
    pkg, train = twin(backend)
    data = separable_set(n_per_class=4)
    config = TrainConfig(epochs=1, batch_size=20, device="cpu")
    try:
        pkg.set_matmul_precision("tf32")  # a framework default other than highest (JAX's on a GPU) must not stick
        _, metrics = train.train_and_evaluate(config, data, quiet=True, log=lambda line: None)
        assert (matmul_precision_now(backend), metrics["matmul_precision"]) == ("highest", "highest")
        assert metrics["config"]["precision"] == "highest"
        _, metrics = train.train_and_evaluate(config.replace(precision="tf32"), data, quiet=True, log=lambda _: None)
        assert (matmul_precision_now(backend), metrics["matmul_precision"]) == ("tf32", "tf32")
    finally:
        pkg.set_matmul_precision("highest")  # the session's pin (conftest)


# ----------------------------------------------------------------------------- determinism and resume


def _small_config(**overrides):
    base = TrainConfig(
        epochs=2, batch_size=32, optimizer="adamw", lr=2e-3, limit_train=320, limit_test=100, device="cpu"
    )
    return base.replace(**overrides)


class Crash(Exception):
    """Stands in for a kill -9 right after an epoch's checkpoint was written."""


def _crash_after(epoch):
    def log(line):
        if f"epoch {epoch:>3}/" in line:
            raise Crash(line)

    return log


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resuming_mid_run_gives_the_same_final_weights_as_an_uninterrupted_run(backend, optimizer, tmp_path):
    _, train = twin(backend)
    data = separable_set(n_per_class=40)
    config = _small_config(epochs=3, optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0)
    full, full_metrics = train.train_and_evaluate(config, data, quiet=True, log=lambda s: None)
    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(Crash):
        train.train_and_evaluate(config, data, out=ckpt, quiet=True, log=_crash_after(1))
    assert canonical.read_train_state(ckpt)[1]["epoch"] == 1
    resumed, resumed_metrics = train.train_and_evaluate(config, data, resume=ckpt, quiet=True, log=lambda s: None)
    a, b = final_weights(backend, full), final_weights(backend, resumed)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r["epoch"] for r in resumed_metrics["epochs"]] == [1, 2, 3]
    assert int(resumed.step) == int(full.step) == 3 * 10  # the update count resumes too (320 images, batch 32)
    assert resumed_metrics["epochs"][-1]["test_loss"] == full_metrics["epochs"][-1]["test_loss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(backend):
    _, train = twin(backend)
    data = separable_set()

    def run(seed):
        return final_weights(
            backend,
            train.train_and_evaluate(_small_config(seed=seed, epochs=1), data, quiet=True, log=lambda s: None)[0],
        )

    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["linear_relu_stack.0.weight"], c["linear_relu_stack.0.weight"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_epoch_rewrites_the_checkpoint_and_metrics_so_a_crash_loses_at_most_one_epoch(backend, tmp_path):
    _, train = twin(backend)
    ckpt, metrics_path = tmp_path / "m.safetensors", tmp_path / "metrics.json"
    seen = []

    def log(line):  # by the time an epoch's line is logged, both files already hold that epoch
        seen.append((canonical.read_train_state(ckpt)[1]["epoch"], len(json.loads(metrics_path.read_text())["epochs"])))

    train.train_and_evaluate(
        _small_config(epochs=2), separable_set(), out=ckpt, metrics_path=metrics_path, quiet=True, log=log
    )
    assert seen == [(1, 1), (2, 2)]
    metrics = json.loads(metrics_path.read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    for key in ("train_loss", "test_loss", "test_accuracy", "epoch_seconds"):
        assert all(isinstance(r[key], float) for r in metrics["epochs"])
    assert metrics["backend"] == backend and metrics["device"] == "cpu" and metrics["config"]["epochs"] == 2
    assert set(metrics["versions"]) >= ({"torch"} if backend == "torch" else {"jax", "flax", "optax"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.safetensors",
        "m.state.safetensors",
        "metrics.json",
    ]  # no temp files left


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_refuses_a_weights_file_and_sidecar_that_do_not_belong_together(backend, tmp_path):
    pkg, train = twin(backend)
    data, config = separable_set(), _small_config(epochs=3)
    ckpt = tmp_path / "m.safetensors"
    with pytest.raises(Crash):
        train.train_and_evaluate(config, data, out=ckpt, quiet=True, log=_crash_after(1))
    sidecar = canonical.train_state_path(ckpt).read_bytes()
    with pytest.raises(Crash):
        train.train_and_evaluate(config, data, out=ckpt, resume=ckpt, quiet=True, log=_crash_after(2))
    # epoch 1's sidecar beside epoch 2's weights: no crash leaves this (the sidecar is renamed first), so it is refused
    canonical.train_state_path(ckpt).write_bytes(sidecar)
    with pytest.raises(CheckpointError, match="do not belong together"):
        train.train_and_evaluate(config, data, resume=ckpt, quiet=True, log=lambda s: None)


def test_resume_with_the_other_backend_names_the_right_one(tmp_path):
    _, torch_train = twin("torch")
    _, flax_train = twin("flax")
    ckpt = tmp_path / "m.safetensors"
    with pytest.raises(Crash):
        torch_train.train_and_evaluate(
            _small_config(epochs=2), separable_set(), out=ckpt, quiet=True, log=_crash_after(1)
        )
    with pytest.raises(CheckpointError, match="resume it with --backend torch"):
        flax_train.train_and_evaluate(
            _small_config(epochs=2), separable_set(), resume=ckpt, quiet=True, log=lambda s: None
        )


def test_the_two_flax_twins_refuse_each_others_optimizer_state_naming_the_right_backend(tmp_path):
    """linen and NNX share a checkpoint format but not optimizer slot keys: a resume names the twin that wrote it."""
    _, flax_train = twin("flax")
    _, nnx_train = twin("nnx")
    for writer, reader in ((nnx_train, flax_train), (flax_train, nnx_train)):
        ckpt = tmp_path / f"{writer.BACKEND}.safetensors"
        with pytest.raises(Crash):
            writer.train_and_evaluate(
                _small_config(epochs=2), separable_set(), out=ckpt, quiet=True, log=_crash_after(1)
            )
        with pytest.raises(CheckpointError, match=f"resume it with --backend {writer.BACKEND}"):
            reader.train_and_evaluate(
                _small_config(epochs=2), separable_set(), resume=ckpt, quiet=True, log=lambda s: None
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_trained_by_one_twin_evaluates_the_same_in_the_other(backend, tmp_path):
    _, train = twin(backend)
    other = {"torch": "nnx", "nnx": "flax", "flax": "torch"}[backend]  # a cycle: every twin writes and reads once
    other_pkg, other_train = twin(other)
    data = separable_set()
    ckpt = tmp_path / "m.safetensors"
    _, metrics = train.train_and_evaluate(_small_config(epochs=1), data, out=ckpt, quiet=True, log=lambda s: None)
    on_device = other_train.put_data(data, None)
    model = other_pkg.load_checkpoint(ckpt)  # one API: no branch on the backend
    result = other_train.evaluate_model(model, on_device.test_images, on_device.test_labels)
    assert result["test_accuracy"] == metrics["epochs"][-1]["test_accuracy"]
    # the loss is a float32 sum over 100 images in another framework: agree to 1e-5 relative
    assert result["test_loss"] == pytest.approx(metrics["epochs"][-1]["test_loss"], rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_with_a_changed_recipe_names_the_key_that_differs(backend, tmp_path):
    _, train = twin(backend)
    ckpt = tmp_path / "m.safetensors"
    with pytest.raises(Crash):
        train.train_and_evaluate(_small_config(epochs=2), separable_set(), out=ckpt, quiet=True, log=_crash_after(1))
    with pytest.raises(CheckpointError, match=r"trained with optimizer='adamw', not 'sgd'"):
        train.train_and_evaluate(
            _small_config(epochs=2, optimizer="sgd"), separable_set(), resume=ckpt, quiet=True, log=lambda s: None
        )
    with pytest.raises(CheckpointError, match=r"trained with epochs=2, not 5"):
        train.train_and_evaluate(_small_config(epochs=5), separable_set(), resume=ckpt, quiet=True, log=lambda s: None)


# ----------------------------------------------------------------------------- the hand-written (fused) torch step


def autograd_step_keeping_grads(state, images, labels):
    """The eager engine's train_step, but the gradients are copied out before zero_grad drops them."""
    loss, correct = state.model_loss(images, labels)
    loss.backward()
    grads = [p.grad.clone() for p in state.model.parameters()]
    state.optimizer.step()
    state.optimizer.zero_grad()
    state.scheduler.step()
    return loss.detach(), correct, grads


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hand_written_torch_backward_matches_autograd_for_every_hidden_activation_it_accepts(activation):
    """Every name in the activation list: the fused step's gradients are autograd's, or the engine refuses it.

    A name the hand-written backward does not know must never train with a zero gradient (a GELU added to the
    list would have, before DIFFERENTIATED): supported() is False for it and the backward raises.
    """
    import torch

    from fashion_common.spec import ModelSpec
    from fashion_torch import fused as hand_written
    from fashion_torch.train import create_train_state

    spec = ModelSpec(activation=activation)
    config = TrainConfig(
        device="cpu", optimizer="adam", lr=1e-3
    )  # adam: the fused step keeps .grad (plain SGD folds it)
    if not hand_written.supported(spec):
        with pytest.raises(ConfigError, match="engine fused"):
            create_train_state(config, spec, engine="fused")
        return
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)
    ref, fused = create_train_state(config, spec, engine="eager"), create_train_state(config, spec, engine="fused")
    ref_loss, _ = ref.model_loss(images, labels)
    ref_loss.backward()
    ref_grads = [p.grad.clone() for p in ref.model.parameters()]
    hand_written.train_step(fused, images, labels)
    for (name, p), g_ref in zip(fused.model.named_parameters(), ref_grads, strict=True):
        assert torch.max(torch.abs(g_ref - p.grad)).item() <= 1e-6, (activation, name)


def test_hand_written_torch_backward_refuses_an_activation_it_has_no_derivative_for():
    import types

    import torch

    from fashion_torch import fused as hand_written

    assert not hand_written.supported(types.SimpleNamespace(activation="gelu", output_activation=None))
    with pytest.raises(ValueError, match="no backward for activation 'gelu'"):
        hand_written._activation_backward_("gelu", torch.ones(2, 3), torch.ones(2, 3))


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "optimizer": "sgd",
            "weight_decay": 0.0,
            "schedule": "constant",
        },  # plain SGD: the update is folded into the GEMM
        {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3},
        {"optimizer": "adamw", "label_smoothing": 0.1},
        {"optimizer": "adam"},
    ],
    ids=["plain-sgd", "momentum-sgd", "adamw-smoothing", "adam"],
)
def test_hand_written_torch_step_matches_autograd_and_torch_optim(overrides):
    import torch

    from fashion_torch import fused as hand_written
    from fashion_torch.train import create_train_state

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    config = TrainConfig(device="cpu", lr=0.05 if overrides["optimizer"] == "sgd" else 1e-3).replace(**overrides)
    ref, fused = (
        create_train_state(config, total_steps=10, engine="eager"),
        create_train_state(config, total_steps=10, engine="fused"),
    )
    assert fused.engine == "fused"
    for step in range(3):
        ref_loss, ref_correct, ref_grads = autograd_step_keeping_grads(ref, images, labels)
        fused_loss, fused_correct = hand_written.train_step(fused, images, labels)
        # same float32 loss up to reassociation: 1e-6 on a loss of about 2.3
        assert abs(float(ref_loss) - float(fused_loss)) <= 1e-6 and int(ref_correct) == int(fused_correct)
        if step == 0 and (overrides["optimizer"] != "sgd" or overrides.get("momentum")):
            for (name, p_fused), g_ref in zip(fused.model.named_parameters(), ref_grads, strict=True):
                # gradients from identical weights: 1e-7 is ~100 ulps of the largest entries (~1e-3)
                assert torch.max(torch.abs(g_ref - p_fused.grad)).item() <= 1e-7, name
    assert ref.step == 0 and fused.step == 3 and fused.scheduler.last_epoch == ref.scheduler.last_epoch == 3
    ref_w, fused_w = to_numpy_weights(ref), to_numpy_weights(fused)
    # SGD moves weights by lr * grad: float32 rounding leaves them within 1e-6. Adam divides by
    # sqrt(v), so where a gradient is ~0 a 1e-9 difference becomes a visible step: 3 steps of lr 1e-3
    # stay within 5e-5 (measured 1.4e-5); a wrong gradient would move them by ~lr = 1e-3 per step.
    tol = 1e-6 if overrides["optimizer"] == "sgd" else 5e-5
    for key in ref_w:
        assert np.abs(ref_w[key] - fused_w[key]).max() <= tol, key


def to_numpy_weights(state):
    from fashion_torch import to_state_dict

    return to_state_dict(state.model)


def test_torch_train_step_is_autograd_and_torch_optim_for_an_output_activation():
    import torch

    from fashion_common.spec import ModelSpec
    from fashion_torch import fused as hand_written
    from fashion_torch.train import create_train_state, train_step

    spec = ModelSpec(output_activation="relu")
    assert not hand_written.supported(spec) and hand_written.supported(ModelSpec(activation="tanh"))
    state = create_train_state(TrainConfig(device="cpu"), spec, total_steps=2)
    before = state.model.linear_relu_stack[0].weight.detach().clone()
    loss, _ = train_step(
        state, torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8), torch.zeros(8, dtype=torch.int64)
    )
    assert state.step == 1 and loss.requires_grad is False
    assert (
        state.model.linear_relu_stack[0].weight.grad is None
    )  # optimizer.zero_grad() after optimizer.step(), as the tutorial
    assert not torch.equal(before, state.model.linear_relu_stack[0].weight)  # and the step moved the weights


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "binary_step"])
def test_hand_written_torch_step_matches_autograd_for_other_hidden_activations(activation):
    import torch

    from fashion_common.spec import ModelSpec
    from fashion_torch import fused as hand_written
    from fashion_torch.train import create_train_state

    spec = ModelSpec(activation=activation)
    config = TrainConfig(device="cpu", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0)
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(32) % 10
    ref, fused = (
        create_train_state(config, spec, total_steps=4),
        create_train_state(config, spec, total_steps=4, engine="fused"),
    )
    for _ in range(2):
        _, _, ref_grads = autograd_step_keeping_grads(ref, images, labels)
        hand_written.train_step(fused, images, labels)
    for g_ref, p_ref, p_fused in zip(ref_grads, ref.model.parameters(), fused.model.parameters(), strict=True):
        assert torch.max(torch.abs(g_ref - p_fused.grad)).item() <= 1e-7
        assert torch.max(torch.abs(p_ref - p_fused)).item() <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eval_batch_size", [7, 30, 100, 1000])
def test_evaluation_in_uneven_chunks_is_the_mean_over_every_image(backend, eval_batch_size):
    """100 images in chunks of 7 or 30 (a short last chunk), or one: per-sample losses summed, hits of every chunk.

    The oracle is numpy on the twin's own probabilities for the whole set at once; after one epoch the
    per-image losses spread widely, so a mean of per-chunk means (or the last chunk's hits alone) misses it.
    """
    _, train = twin(backend)
    data = separable_set(n_per_class=10)  # 100 test images
    config = _small_config(epochs=1, lr=2e-4, eval_batch_size=eval_batch_size)  # part-trained: hits and misses
    state, _ = train.train_and_evaluate(config, data, quiet=True, log=lambda s: None)
    model = train.trained_model(state)
    probs = train.predict_proba(model, data.test_images.astype(np.float32) / 255.0).astype(np.float64)
    labels = data.test_labels.astype(np.int64)
    expected_loss = float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))
    expected_accuracy = float(np.mean(probs.argmax(1) == labels))
    assert 0.0 < expected_accuracy < 1.0  # some hits and some misses: counting only some chunks shows

    on_device = train.put_data(data, None)
    result = train.evaluate(state, on_device, config)
    assert result["test_accuracy"] == expected_accuracy
    # float32 softmax in the twin vs float64 log here: 1e-5 relative
    assert result["test_loss"] == pytest.approx(expected_loss, rel=1e-5)
    again = train.evaluate_model(model, on_device.test_images, on_device.test_labels, eval_batch_size)
    assert again["test_accuracy"] == result["test_accuracy"]
    assert again["test_loss"] == pytest.approx(result["test_loss"], rel=1e-6)
