"""Hostile inputs, pinned by example: nothing is lost, bad files fail at once and precisely, the twins fail alike.

tests/test_properties.py draws the unknown edges; these are the known ones from the hardening issue.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from backends import BACKEND_NAMES, get_backend, image_batch
from twin_data import write_idx_set

from fashion_common import checkpoint as canonical
from fashion_common import data as data_mod
from fashion_common import loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData, load_fashion_mnist
from fashion_common.errors import CheckpointError, DataError, DimError, InputDtypeError, NonFiniteLossError, WriteError


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


# ----------------------------------------------------------------------------- the atomic writer: modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_plain_open_gives_under_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        canonical.atomic_write_bytes(tmp_path / "new.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode) == mode  # the rule: what open() does


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    canonical.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_checkpoints_metrics_and_the_data_cache_all_follow_the_umask(tmp_path, backend):
    old = os.umask(0o022)
    try:
        backend.save(backend.init(seed=0), tmp_path / "m.safetensors")
        loop.write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("m.safetensors", "metrics.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# ----------------------------------------------------------------------------- the atomic writer: temp files


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so no process runs under it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_temp_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "model.safetensors"
    dead = tmp_path / f".model.safetensors.{_dead_pid()}.0badc0de.tmp"  # what a kill -9 mid-write leaves
    dead.write_bytes(b"half a checkpoint")
    legacy = tmp_path / ".model.safetensors.k3j4h5g6.tmp"  # mkstemp's name, from before the pid was in it
    legacy.write_bytes(b"older")
    hour_ago = time.time() - 3600
    os.utime(legacy, (hour_ago, hour_ago))
    canonical.atomic_write_bytes(path, b"whole")
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_a_live_writers_temp_is_left_alone(tmp_path):
    path = tmp_path / "model.safetensors"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".model.safetensors.{sleeper.pid}.12345678.tmp"  # another process, mid-write
        live.write_bytes(b"in progress")
        canonical.atomic_write_bytes(path, b"whole")
        assert live.exists()
        other = tmp_path / f".other.safetensors.{_dead_pid()}.12345678.tmp"  # another target's temp: not ours to sweep
        other.write_bytes(b"x")
        canonical.atomic_write_bytes(path, b"again")
        assert live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_writer_killed_mid_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
    path = tmp_path / "model.safetensors"
    root = Path(__file__).resolve().parent.parent
    # A child that writes its temp file, then hangs before the rename; kill -9 it there.
    code = (
        f"import sys, time; sys.path.insert(0, {str(root)!r})\n"
        "from fashion_common import checkpoint as c\n"
        "c.os.replace = lambda *a: (print('written', flush=True), time.sleep(60))\n"
        f"c.atomic_write_bytes({str(path)!r}, b'x' * 4096)\n"
    )
    for _ in range(3):  # three killed writers: their temps must not accumulate
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "written"
        child.kill()
        child.wait()
    assert len(os.listdir(tmp_path)) == 3  # three orphaned temps, as a kill -9 leaves them
    canonical.atomic_write_bytes(path, b"whole")
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert path.read_bytes() == b"whole"


# ----------------------------------------------------------------------------- the atomic writer: failures


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")]
)
def test_a_failed_write_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, backend, code, words):
    path = tmp_path / "model.safetensors"
    backend.save(backend.init(seed=0), path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FailingFile:
        def __init__(self, fd, mode):
            self._f = real_fdopen(fd, mode)

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(canonical.os, "fdopen", FailingFile)
    with pytest.raises(WriteError) as info:
        backend.save(backend.init(seed=1), path)
    assert str(info.value) == f"cannot write {path}: {words}"  # one line, the target's name (not the temp's)
    assert isinstance(info.value, OSError) and info.value.errno == code
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


# ----------------------------------------------------------------------------- checkpoint paths that are not files


def _load_error(name, path) -> str:
    with pytest.raises(CheckpointError) as info:
        get_backend(name).load(path)
    return str(info.value)


def test_a_directory_as_checkpoint_says_so(tmp_path):
    messages = {name: _load_error(name, tmp_path) for name in BACKEND_NAMES}
    assert messages["torch"] == messages["flax"] == f"checkpoint {tmp_path} is a directory, not a file"


def test_a_fifo_as_checkpoint_fails_at_once_without_opening_it(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    start = time.monotonic()
    messages = {name: _load_error(name, fifo) for name in BACKEND_NAMES}  # open() on a FIFO would block forever
    assert time.monotonic() - start < 5
    assert messages["torch"] == messages["flax"] == f"checkpoint {fifo} is not a regular file (a FIFO)"


def test_a_device_file_as_checkpoint_is_not_a_regular_file():
    messages = {name: _load_error(name, "/dev/null") for name in BACKEND_NAMES}
    assert messages["torch"] == messages["flax"] == "checkpoint /dev/null is not a regular file (a device file)"


def test_a_sidecar_given_as_the_checkpoint_names_the_mix_up(tmp_path):
    path = tmp_path / "m.safetensors"
    canonical.write_train_state(path, {"momentum/x": np.zeros(2, np.float32)}, {"x": 1})
    with pytest.raises(CheckpointError, match="is a training-state sidecar, not a model checkpoint"):
        canonical.read_state(canonical.train_state_path(path))


# ----------------------------------------------------------------------------- a PyTorch pickle


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_torch_save_file_read_by_the_canonical_reader_names_the_convert_command(tmp_path, legacy):
    import torch

    path = tmp_path / "model_weights.pth"
    state = {k: torch.from_numpy(v) for k, v in _good_state().items()}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)  # the tutorial's "Save and load the model"
    assert path.read_bytes()[:4] == b"PK\x03\x04" if not legacy else path.read_bytes()[0] == 0x80
    want = (
        f"{path} is a PyTorch pickle (torch.save), not a safetensors checkpoint; convert it with "
        f"`fashion-twins convert {path} OUT.safetensors`"
    )
    with pytest.raises(CheckpointError) as info:
        canonical.read_state(path)
    assert str(info.value) == want
    # The flax twin never imports torch, so this is its whole answer.
    assert _load_error("flax", path) == want


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_is_still_read(tmp_path):
    """0x80 0x02 is also a plausible little-endian header length (640): safetensors is tried by its form first."""
    path = tmp_path / "m.safetensors"
    state = _good_state()
    for pad in range(0, 200):
        blob = safetensors.numpy.save(state, metadata={"pad": "x" * pad})
        if blob[0] == 0x80 and 2 <= blob[1] <= 5:
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80 0x02..05")
    path.write_bytes(blob)
    loaded, _ = canonical.read_state(path)
    np.testing.assert_array_equal(loaded["linear_relu_stack.0.bias"], state["linear_relu_stack.0.bias"])


# ----------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_twins_refuse_nonfinite_weights_naming_the_tensor(tmp_path, value):
    state = _good_state()
    state["linear_relu_stack.2.weight"][3, 7] = value
    path = tmp_path / "diverged.safetensors"
    safetensors.numpy.save_file(state, str(path))
    messages = {name: _load_error(name, path) for name in BACKEND_NAMES}
    assert messages["torch"] == messages["flax"]
    assert f"{path}: tensor 'linear_relu_stack.2.weight' holds 1 non-finite values (NaN or Inf)" in messages["torch"]
    loaded, _ = canonical.read_state(path, allow_nonfinite=True)  # the opt-out, for inspecting a diverged run
    assert not np.isfinite(loaded["linear_relu_stack.2.weight"]).all()


# ----------------------------------------------------------------------------- non-finite loss


def _fake_epochs(monkeypatch, backend, losses, saved):
    """The twin's own train_and_evaluate, its epochs reporting the given train losses; save records (epoch, path)."""
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    real_epoch = train.train_epoch

    def train_epoch(state, data, order, config, progress, shifts=None):
        state, metrics = real_epoch(state, data, order, config, progress, shifts)
        return state, {**metrics, "train_loss": losses[len(saved)]}

    def save_train_state(state, path, counters):
        Path(path).write_text(json.dumps(counters["epoch"]))
        saved.append(counters["epoch"])

    monkeypatch.setattr(train, "train_epoch", train_epoch)
    monkeypatch.setattr(train, "save_train_state", save_train_state)
    return train


def _tiny_data():
    images = np.zeros((8, 28, 28), np.uint8)
    labels = np.arange(8, dtype=np.int32) % 10
    return FashionData(images, labels, images, labels, "tiny")


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_nonfinite_train_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, bad, backend):
    out, saved = tmp_path / "m.safetensors", []
    config = TrainConfig(epochs=3, batch_size=4, device="cpu", augment_shift=0)
    train = _fake_epochs(monkeypatch, backend, [0.5, bad, 0.1], saved)
    with pytest.raises(NonFiniteLossError) as info:
        train.train_and_evaluate(config, _tiny_data(), out=str(out), quiet=True, log=lambda s: None)
    assert str(info.value) == (
        f"epoch 2: train_loss is {bad}, training diverged; {out} was not overwritten, it keeps the last good "
        "epoch; lower --lr or check the data"
    )
    assert saved == [1] and out.read_text() == "1"  # epoch 1's file, untouched by epoch 2


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_a_twin_trained_at_an_absurd_learning_rate_stops_with_nonfinite_loss(tmp_path, backend_name):
    import importlib

    from twin_data import separable_set

    train = importlib.import_module(f"fashion_{backend_name}.train")
    out = tmp_path / "m.safetensors"
    # SGD at lr 1e30: the first steps overflow float32 (weights ~1e30, logits ~1e60 = inf), so loss is NaN in epoch 1.
    config = TrainConfig(
        epochs=2,
        batch_size=32,
        optimizer="sgd",
        lr=1e30,
        schedule="constant",
        limit_train=64,
        limit_test=20,
        device="cpu",
    )
    with pytest.raises(NonFiniteLossError, match=r"^epoch 1: (train|test)_loss is (nan|inf)"):
        train.train_and_evaluate(config, separable_set(), out=str(out), quiet=True, log=lambda s: None)
    assert not out.exists()


# --------------------------------------------------------------------- data: an explicit --data-dir is always verified


@pytest.mark.parametrize("how", ["--data-dir", "FASHION_TWINS_DATA"])
def test_a_corrupt_file_in_a_named_data_folder_is_an_error_even_with_a_good_cache(tmp_path, cache, monkeypatch, how):
    arrays, checksums = write_idx_set(tmp_path / "good")
    load_fashion_mnist(tmp_path / "good", checksums=checksums)  # the cache now holds good copies
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in checksums:
        (bad / f"{name}.gz").write_bytes((tmp_path / "good" / f"{name}.gz").read_bytes())
    payload = bytearray(gzip.decompress((bad / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    payload[-1] ^= 0xFF
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(payload)))
    if how == "--data-dir":

        def call():
            return load_fashion_mnist(bad, checksums=checksums)

    else:
        monkeypatch.setenv(data_mod.ENV_DATA, str(bad))

        def call():
            return load_fashion_mnist(checksums=checksums)

    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz decompresses to the wrong bytes"):
        call()
    # and the good cache was not overwritten by anything from the bad folder
    good = load_fashion_mnist(tmp_path / "good", checksums=checksums)
    np.testing.assert_array_equal(good.test_labels, arrays["t10k-labels-idx1-ubyte"])


# ----------------------------------------------------------------------------- the twins fail alike: examples


def _outcome(fn):
    """(result as float64 numpy, None) or (None, (exception class, message))."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001  # the class and message are what is compared
        return None, (type(e), str(e))
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return out, None


@pytest.fixture(scope="module")
def nets():
    return {name: get_backend(name).init(seed=0) for name in BACKEND_NAMES}


@pytest.mark.parametrize("layout", ["N,28,28", "N,1,28,28"])
def test_an_empty_batch_gives_0_by_10_logits_in_both_twins(nets, layout):
    x = image_batch(0, layout=layout)
    for name in BACKEND_NAMES:
        out = get_backend(name).forward(nets[name], x)
        assert tuple(out.shape) == (0, 10), name


def test_both_twins_accept_a_numpy_batch_and_a_nested_list_alike(nets):
    import torch

    x = image_batch(2)
    torch_net = nets["torch"]
    flax_net = get_backend("flax").from_state_dict(get_backend("torch").to_state_dict(torch_net))  # the same weights
    want = get_backend("torch").logits(torch_net, x)
    with torch.no_grad():
        from_numpy = torch_net(x).numpy()  # a NumPy array straight into the torch model
        from_list = torch_net(x.tolist()).numpy()
    flax_numpy = np.asarray(flax_net.model.apply(flax_net.params, x))
    flax_list = np.asarray(flax_net.model.apply(flax_net.params, x.tolist()))
    flax_torch = np.asarray(flax_net.model.apply(flax_net.params, torch.from_numpy(x)))  # a CPU torch tensor into flax
    nnx_net = get_backend("nnx").from_state_dict(get_backend("torch").to_state_dict(torch_net))
    nnx_outs = [np.asarray(nnx_net(x)), np.asarray(nnx_net(x.tolist())), np.asarray(nnx_net(torch.from_numpy(x)))]
    np.testing.assert_array_equal(from_numpy, want)
    np.testing.assert_array_equal(from_list, want)  # float64 list -> float32: the same values
    # cross-twin: float32 matmuls in two libraries, summation order differs (test_parity.py's 1e-6)
    for got in (flax_numpy, flax_list, flax_torch, *nnx_outs):
        assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize(
    "x, phrase",
    [
        ([[1, 2]], "got (1, 2)"),
        (np.zeros((2, 28, 28), np.int64).tolist(), "got int64"),
        (np.zeros((1, 28, 28), np.uint8), "got uint8"),
    ],
    ids=["short list", "int list", "uint8 numpy"],
)
def test_both_twins_refuse_a_bad_numpy_or_list_input_with_the_same_error(nets, x, phrase):
    torch_out = _outcome(lambda: nets["torch"](x))
    flax_out = _outcome(lambda: nets["flax"].model.apply(nets["flax"].params, x))
    nnx_out = _outcome(lambda: nets["nnx"](x))
    assert torch_out[1] == flax_out[1] == nnx_out[1] and torch_out[1] is not None
    assert phrase in torch_out[1][1]


@pytest.mark.parametrize("dim", [None, True, False, 1.0, "1", 2, -3, 99])
def test_softmax_with_a_bad_dim_raises_the_same_dim_error_in_both_twins(dim):
    x = np.zeros((2, 3), np.float32)
    outcomes = {}
    for name in BACKEND_NAMES:
        with pytest.raises(DimError) as info:
            get_backend(name).activation("softmax", x, dim=dim)
        outcomes[name] = str(info.value)
        assert isinstance(
            info.value, (IndexError, TypeError)
        )  # what torch's own softmax raises, so old handlers still catch it
    assert outcomes["torch"] == outcomes["flax"] == outcomes["nnx"]


def test_softmax_accepts_numpy_integer_dims_and_treats_a_0d_input_as_one_value():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    for name in BACKEND_NAMES:
        b = get_backend(name)
        np.testing.assert_allclose(
            b.activation("softmax", x, dim=np.int64(1)), b.activation("softmax", x, dim=1), rtol=0, atol=0
        )
        assert b.activation("softmax", np.float32(5.0), dim=0) == 1.0
        assert b.activation("softmax", np.float32(5.0), dim=-1) == 1.0


@pytest.mark.parametrize("name", ["binary_step", "sigmoid", "tanh", "relu", "softmax"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64])
def test_activations_refuse_integer_bool_and_complex_inputs_alike(name, dtype):
    x = np.ones((2, 3), dtype)
    messages = {}
    for backend_name in BACKEND_NAMES:
        twin = get_backend(backend_name).module
        # Straight into the twin: a torch tensor, and for flax the NumPy array as given (jnp.asarray
        # with x64 off would make int64 an int32 before the twin could name it).
        arg = __import__("torch").from_numpy(x) if backend_name == "torch" else x
        with pytest.raises(InputDtypeError) as info:
            getattr(twin, name)(arg)
        messages[backend_name] = str(info.value)
    assert (
        messages["torch"]
        == messages["flax"]
        == messages["nnx"]
        == f"{name} expects a floating-point input, got {np.dtype(dtype)}; cast it to float32 first"
    )


def test_model_forward_on_nan_inf_and_huge_inputs_gives_the_same_pattern_in_both_twins(nets):
    x = image_batch(6, seed=1)
    x[0, 0, 0] = np.nan  # NaN spreads to every logit of its row
    x[1, 5, 5] = np.inf  # inf times weights of both signs: inf - inf = NaN downstream
    x[2, 3, 3] = -np.inf
    x[3] = np.inf  # every unit sums inf * w over weights of both signs: NaN
    x[4, 10, 10] = 1e30  # huge but finite products: logits ~1e28, finite
    state = get_backend("torch").to_state_dict(nets["torch"])
    same = {
        name: nets["torch"] if name == "torch" else get_backend(name).from_state_dict(state) for name in BACKEND_NAMES
    }
    outs = {name: get_backend(name).logits(same[name], x) for name in BACKEND_NAMES}
    assert np.isnan(outs["torch"][0]).all() and np.isnan(outs["torch"][3]).all()
    finite = np.isfinite(outs["torch"])
    assert finite[4].all() and finite[5].all()
    for twin in ("flax", "nnx"):
        np.testing.assert_array_equal(np.isnan(outs["torch"]), np.isnan(outs[twin]))
        np.testing.assert_array_equal(np.isinf(outs["torch"]), np.isinf(outs[twin]))
        # relative: row 4 is ~1e28, where 1e-6 absolute means nothing; float32 summation order gives ~1e-6 relative
        rel = np.abs(outs["torch"][finite] - outs[twin][finite]) / np.maximum(np.abs(outs["torch"][finite]), 1.0)
        assert rel.max() <= 1e-5, twin


def test_an_output_name_whose_temp_file_would_be_too_long_is_refused_before_any_work(tmp_path):
    from fashion_common.checkpoint import atomic_write_bytes
    from fashion_common.paths import TEMP_NAME_EXTRA, PathError, check_output_file

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")  # 255 on ext4, tmpfs, overlayfs
    fits = tmp_path / ("a" * (limit - TEMP_NAME_EXTRA))
    check_output_file(fits, "--out")
    with pytest.raises(PathError, match=rf"--out .*: the file name is {limit - TEMP_NAME_EXTRA + 1} bytes"):
        check_output_file(tmp_path / ("a" * (limit - TEMP_NAME_EXTRA + 1)), "--out")
    atomic_write_bytes(fits, b"ok")  # the longest name accepted really is writable: its temp name fits
    assert fits.read_bytes() == b"ok"


@pytest.mark.parametrize(
    "seed, error, words",
    [
        (1.5, TypeError, "got float 1.5"),
        ("0", TypeError, "got str '0'"),
        (True, TypeError, "got bool True"),
        (-1, ValueError, "got -1"),
        (2**32, ValueError, f"got {2**32}"),
    ],
)
def test_create_model_refuses_a_bad_seed_with_the_same_error_in_both_twins(seed, error, words):
    import importlib

    raised = []
    for name in ("torch", "flax"):
        with pytest.raises(error) as e:
            importlib.import_module(f"fashion_{name}").create_model(seed=seed)
        raised.append((type(e.value), str(e.value)))
    assert raised[0] == raised[1] == (error, f"seed must be None or an int from 0 to {2**32 - 1}, {words}")


def test_create_model_takes_a_numpy_integer_seed_as_the_same_int_in_both_twins():
    import fashion_flax
    import fashion_torch

    a, b = fashion_torch.create_model(seed=np.int64(3)), fashion_torch.create_model(seed=3)
    assert all(
        np.array_equal(x.detach().numpy(), y.detach().numpy())
        for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )
    (_, pa), (_, pb) = fashion_flax.create_model(seed=np.int64(3)), fashion_flax.create_model(seed=3)
    fa, fb = fashion_flax.to_state_dict(pa), fashion_flax.to_state_dict(pb)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_a_fresh_run_that_diverges_in_its_first_epoch_does_not_claim_the_existing_out_as_its_own():
    fresh = loop.Run(data=None, val=None, steps_per_epoch=1, total_steps=2, out="old.safetensors")
    nan = {"train_loss": float("nan"), "train_accuracy": 0.1}
    with pytest.raises(NonFiniteLossError) as e:
        loop.epoch_row(1, 0.0, nan, {"test_loss": 1.0, "test_accuracy": 0.1}, None, fresh)
    assert "old.safetensors" not in str(e.value)  # that file is an earlier run's, not this one's last good epoch
    with pytest.raises(NonFiniteLossError, match="old.safetensors was not overwritten, it keeps the last good epoch"):
        loop.epoch_row(2, 0.0, nan, {"test_loss": 1.0, "test_accuracy": 0.1}, None, fresh)  # epoch 1 was saved
