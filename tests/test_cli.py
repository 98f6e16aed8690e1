"""The `fashion-twins` command end to end: train, evaluate, predict and lockstep, as a user runs them.

Most tests call `fashion_twins.cli.main(argv)` in this process (each subprocess costs seconds of
torch/JAX imports); two run `python -m fashion_twins` as a subprocess from another folder, to
prove the entry point itself. The dry-run checkpoints are trained once per module and shared.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data
from PIL import Image

from fashion_common import checkpoint as canonical
from fashion_common.config import TrainConfig
from fashion_common.errors import ImageError
from fashion_common.images import load_image
from fashion_common.spec import BACKENDS, CLASS_NAMES, checkpoint_keys
from fashion_common.text import format_prediction

REPO = Path(__file__).resolve().parent.parent
OTHER = {"torch": "flax", "flax": "nnx", "nnx": "torch"}  # each twin reads the next one's checkpoint
SUBCOMMANDS = ("train", "evaluate", "predict", "compare", "benchmark", "lockstep", "convert")

EVAL_LINE = re.compile(r"^\[(\w+)\] test_loss (\d+\.\d{4})  test_acc (\d+\.\d{2})%  \((\d+) images, checkpoint (.+)\)$")
PREDICT_LINE = re.compile(
    r"^\[(\w+)\] (\S+)(?:  inverted (yes|no))?(?:  saw \S+)?  pred (.+?)(?:  true (.+?))?(?:  (low confidence))?"
    r"  top-(\d+): (.+)$"
)

# Fashion-MNIST's first two test images (stored labels 9 and 2).
TEST_LABELS = {0: "Ankle boot", 1: "Pullover"}


def subprocess_env(tmp_path):
    """`python -m fashion_twins` from a folder outside the checkout.

    The checkout on PYTHONPATH, a private cache, one thread.
    """
    env = {k: v for k, v in os.environ.items() if k != "FASHION_TWINS_TRACEBACK"}
    env["PYTHONPATH"] = str(REPO)
    env["FASHION_TWINS_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_trouser_png(path, size=56):
    """A bright trouser-like shape on black, as Fashion-MNIST draws garments: a waistband and two legs."""
    pixels = np.zeros((size, size), np.uint8)
    pixels[4:52, 14:27] = 230  # left leg
    pixels[4:52, 30:43] = 230  # right leg
    pixels[4:12, 14:43] = 230  # waistband joining them
    Image.fromarray(pixels).save(path)
    return path


# ----------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """backend -> (checkpoint, METRICS.json, stdout) of one `train --dry-run`, made on first use."""
    runs = {}

    def get(backend):
        if backend not in runs:
            folder = tmp_path_factory.mktemp(f"train_{backend}")
            ckpt, metrics = folder / "model.safetensors", folder / "METRICS.json"
            result = cli("train", "--backend", backend, "--dry-run", "--quiet", "--out", ckpt, "--metrics", metrics)
            assert_ok(result)
            runs[backend] = (ckpt, metrics, result.stdout)
        return runs[backend]

    return get


@pytest.fixture(scope="module")
def cross_predictions(trained, tmp_path_factory):
    """trainer -> parsed `predict` lines from the OTHER twin, for a drawn PNG and test images 0 and 1."""
    runs = {}

    def get(trainer):
        if trainer not in runs:
            png = write_trouser_png(tmp_path_factory.mktemp("png") / "trouser.png")
            ckpt, _, _ = trained(trainer)
            result = cli("predict", "--backend", OTHER[trainer], ckpt, png, "--test-index", 0, 1, "--top", 10)
            assert_ok(result)
            lines = result.stdout.strip().splitlines()
            assert len(lines) == 3, result.stdout
            runs[trainer] = [_parse_prediction(line) for line in lines]
        return runs[trainer]

    return get


def _parse_prediction(line):
    match = PREDICT_LINE.match(line)
    assert match, line
    backend, name, inverted, pred, true, low, k, listed = match.groups()
    probs = {}
    for entry in listed.split(", "):
        cls, percent = entry.rsplit(" ", 1)
        probs[cls] = float(percent.rstrip("%")) / 100
    assert len(probs) == int(k)
    return {
        "backend": backend,
        "name": name,
        "inverted": inverted,
        "pred": pred,
        "true": true,
        "low": low is not None,
        "probs": probs,
    }


# ----------------------------------------------------------------------------- the command itself


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_python_m_fashion_twins_lists_every_subcommand_from_any_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fashion_twins", "--help"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_ok(result)
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\b", result.stdout, re.M), name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_help_string_of_every_subcommand_states_its_default(name, capsys):
    from fashion_twins.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[name]
    for action in sub._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        assert re.search(r"\((?:[^()]|\([^()]*\))*(default|required)\b", action.help or ""), (
            f"{name} {action.option_strings}: {action.help!r}"
        )


def test_train_help_states_every_config_default(capsys):
    assert cli("train", "--help").returncode == 0
    text = " ".join(cli("train", "--help").stdout.split())  # argparse wraps help lines
    for name, value in TrainConfig().to_dict().items():
        flag = "--" + name.replace("_", "-")
        assert flag in text
        stated = "all" if value is None and name.startswith("limit_") else value
        assert f"(default: {stated}" in text.split(flag + " ", 2)[-1], flag
    assert "--dry-run" in text and "--tutorial-recipe" in text


def test_a_field_added_to_train_config_becomes_a_train_flag_with_no_cli_edit(monkeypatch, tmp_path):
    """Other work adds fields (augmentation, EMA): each must appear with its type, choices, help and default,
    all read from the field itself (its metadata), the one source of a flag's text."""
    import fashion_twins.cli.train as train_cli

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        mixup: bool = dataclasses.field(default=False, metadata={"help": "blend pairs of training images"})
        ema_decay: float | None = dataclasses.field(default=None, metadata={"help": "weight averaging; None is off"})
        crop: str = dataclasses.field(default="none", metadata={"help": "crop mode", "choices": ("none", "centre")})

        def _check(self):  # the stand-in fields need no range checks
            pass

    monkeypatch.setattr(train_cli, "TrainConfig", Extended)
    from fashion_twins.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(sub.format_help().split())
    assert "--mixup, --no-mixup blend pairs of training images (default: False)" in text
    assert "--ema-decay X weight averaging; None is off (default: None)" in text
    assert "--crop {none,centre} crop mode (default: none)" in text
    assert "--optimizer {sgd,adam,adamw}" in text  # a real field's choices, from its metadata
    args = sub.parse_args(
        ["--backend", "torch", "--out", str(tmp_path / "m"), "--engine", "compile", "--mixup", "--ema-decay", "0.999"]
    )
    assert (args.engine, args.mixup, args.ema_decay, args.crop) == ("compile", True, 0.999, None)
    assert_one_error_line(
        cli("train", "--backend", "torch", "--out", tmp_path / "m", "--engine", "jit"),
        "argument --engine: invalid choice",
    )


def test_backend_device_and_precision_have_one_vocabulary_in_every_subcommand():
    from fashion_twins.cli import build_parser

    subs = build_parser()._subparsers._group_actions[0].choices
    seen = {}
    for name, sub in subs.items():
        for action in sub._actions:
            if action.dest in ("backend", "device", "precision", "output_activation"):
                if (name, action.dest) == ("lockstep", "backend"):  # the JAX twin held against torch: no torch
                    assert tuple(action.choices) == tuple(b for b in BACKENDS if b != "torch")
                    continue
                if (name, action.dest) == ("train", "precision"):  # one run trains at one precision: no "both"
                    assert tuple(action.choices) == ("highest", "tf32")
                if (name, action.dest) in (("lockstep", "precision"), ("benchmark", "precision")):
                    assert tuple(action.choices) == ("highest", "tf32", "both")  # they can run each mode in turn
                    continue
                seen.setdefault(action.dest, set()).add(tuple(action.choices))
    assert seen == {
        "backend": {BACKENDS},
        "device": {("auto", "cpu", "gpu")},
        "precision": {("highest", "tf32")},
        "output_activation": {("none", "relu")},
    }
    # every command that computes takes --precision; convert only copies weights
    takes = {name for name, sub in subs.items() if any(a.dest == "precision" for a in sub._actions)}
    assert takes == {"train", "evaluate", "predict", "compare", "lockstep", "benchmark"}


# ----------------------------------------------------------------------------- train


@pytest.mark.parametrize("backend", BACKENDS)
@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_dry_run_writes_a_checkpoint_and_metrics_json(trained, backend):
    ckpt, metrics_path, stdout = trained(backend)

    assert re.search(rf"^\[{backend}\] epoch +1/1  train_loss \d", stdout, re.M), stdout
    state, _ = canonical.read_state(ckpt)  # the canonical format, readable without either framework
    assert set(state) == set(checkpoint_keys())
    assert canonical.train_state_path(ckpt).is_file()  # optimizer sidecar for --resume

    metrics = json.loads(metrics_path.read_text())
    assert metrics["backend"] == backend
    assert metrics["device"] == "cpu"
    assert {"torch": "torch", "flax": "jax", "nnx": "jax"}[backend] in metrics["versions"]
    framework = {"torch": "torch", "flax": "jax", "nnx": "jax"}[backend]
    assert metrics["matmul_precision"] == metrics["matmul_precision_by_framework"][framework] == "highest"
    assert metrics["config"] == TrainConfig(epochs=1, limit_train=2048, limit_test=512).to_dict()
    assert (metrics["num_train"], metrics["num_test"]) == (2048, 512)
    (epoch,) = metrics["epochs"]
    assert epoch["epoch"] == 1 and epoch["epoch_seconds"] > 0
    assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["test_loss"])
    # 16 adamw steps reach about 65 %; 40 % is far above chance (10 %) yet safe against seed or library drift.
    assert 0.4 < epoch["test_accuracy"] <= 1.0


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_without_metrics_flag_writes_metrics_beside_the_checkpoint(tmp_path):
    result = cli("train", "--backend", "torch", "--dry-run", "--quiet", "--out", tmp_path / "m.safetensors")
    assert_ok(result)
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["backend"] == "torch" and len(metrics["epochs"]) == 1


# ----------------------------------------------------------------------------- the other twin reads the checkpoint


@pytest.mark.parametrize("trainer", BACKENDS)
@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_checkpoint_from_one_twin_evaluates_to_the_same_metrics_in_the_other(trained, trainer):
    ckpt, metrics_path, _ = trained(trainer)
    result = cli("evaluate", "--backend", OTHER[trainer], ckpt, "--limit-test", 512)
    assert_ok(result)
    match = EVAL_LINE.match(result.stdout.strip())
    assert match, result.stdout
    backend, loss, acc, n, path = match.groups()
    assert (backend, int(n), path) == (OTHER[trainer], 512, str(ckpt))
    assert result.stderr == ""  # the header has a spec: no "assumed" note

    (trained_epoch,) = json.loads(metrics_path.read_text())["epochs"]
    # The printed loss is rounded to 4 decimals (<= 5e-5); float32 sums in the two frameworks differ by ~1e-6.
    assert abs(float(loss) - trained_epoch["test_loss"]) <= 1e-4
    # Accuracy may differ by one image at most, should a near-tie argmax flip between frameworks.
    assert abs(float(acc) / 100 - trained_epoch["test_accuracy"]) <= 1 / 512 + 1e-4


@pytest.mark.parametrize("trainer", BACKENDS)
@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_predict_names_a_class_for_a_drawn_png_with_probabilities_summing_to_one(cross_predictions, trainer):
    png = cross_predictions(trainer)[0]
    assert (png["backend"], Path(png["name"]).name, png["true"]) == (OTHER[trainer], "trouser.png", None)
    assert png["inverted"] == "no"  # light on black already, as the dataset draws garments
    assert png["pred"] in CLASS_NAMES
    assert set(png["probs"]) == set(CLASS_NAMES)  # --top 10 lists every class
    assert png["pred"] == max(png["probs"], key=png["probs"].get)
    # Ten percentages printed to 2 decimals: rounding moves the sum by at most 10 * 0.005 %.
    assert abs(sum(png["probs"].values()) - 1.0) <= 5e-4


@pytest.mark.parametrize("trainer", BACKENDS)
@needs_data
def test_predict_test_index_prints_the_true_label_of_stored_test_images(cross_predictions, trainer):
    for index, row in zip((0, 1), cross_predictions(trainer)[1:], strict=True):
        assert row["name"] == f"test[{index}]"
        assert row["true"] == TEST_LABELS[index]
        assert row["inverted"] is None  # only image files are candidates for inversion
        assert row["pred"] in CLASS_NAMES
        assert abs(sum(row["probs"].values()) - 1.0) <= 5e-4


# ----------------------------------------------------------------------------- bad input: one line, no traceback


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--epochs", "0"), "argument --epochs: epochs must be >= 1"),
        (("--lr", "-1"), "argument --lr: lr must be a positive number"),
        (("--optimizer", "foo"), "argument --optimizer: invalid choice: 'foo'"),
    ],
)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_bad_config_value_gives_one_error_line_naming_the_flag(tmp_path, args, fragment):
    result = cli("train", "--backend", "torch", *args, "--out", tmp_path / "m.safetensors")
    assert_one_error_line(result, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_missing_output_folder_fails_before_training_with_one_error_line(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = cli(
        "train", "--backend", "flax", "--dry-run", "--out", missing / "m.safetensors", "--metrics", tmp_path / "m.json"
    )
    assert_one_error_line(result, "--out", "does not exist")
    assert not missing.exists() and not (tmp_path / "m.json").exists()


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_missing_checkpoint_gives_one_error_line(tmp_path):
    result = cli("evaluate", "--backend", "torch", tmp_path / "nope.safetensors")
    assert_one_error_line(result, "nope.safetensors")


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_unreadable_image_gives_one_error_line(tmp_path):
    fake = tmp_path / "x.png"
    fake.write_text("this is text, not a PNG\n")
    result = cli("predict", "--backend", "torch", tmp_path / "model.safetensors", fake)
    assert_one_error_line(result, str(fake), "not a readable image")


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_backend_module_for_flax_imports_its_train_module_but_not_torch(tmp_path):
    code = (
        "import sys; from fashion_twins.cli import common; twin = common.backend_module('flax'); "
        "assert twin.train.BACKEND == 'flax'; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_ok(result)
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------- fashion_common/images.py in process


def test_load_image_turns_a_png_into_28x28_floats_with_bright_stays_bright(tmp_path):
    image = load_image(write_trouser_png(tmp_path / "trouser.png"))
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    # Background stays black (light on black is never inverted); Lanczos rings by a level or two next to edges.
    assert image[:, :4].max() < 0.02
    # Middle of the left leg (rows 4..52, cols 14..27 of 56 -> cols 7..13 of 28) keeps 230 / 255.
    assert abs(image[14, 10] - 230 / 255) < 0.02


def test_load_image_keeps_a_tall_image_s_aspect_ratio_centred_on_black(tmp_path):
    tall = np.full((80, 20), 255, np.uint8)  # a white bar 4x taller than wide
    Image.fromarray(tall).save(tmp_path / "tall.png")
    image = load_image(tmp_path / "tall.png", invert="no")
    # 20 of 80 columns -> 7 of 28, centred: columns 0..9 and 17..27 are black.
    assert image[:, :9].max() < 0.05 and image[:, 20:].max() < 0.05
    assert image[:, 12:16].min() > 0.95


def test_load_image_puts_transparent_pixels_on_black(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the centre is opaque
    rgba[10:18, 10:18, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut_out.png")
    image = load_image(tmp_path / "cut_out.png")
    assert image[0, 0] == 0.0 and image[14, 14] > 0.99


def test_load_image_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"x\.png is not a readable image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(ImageError, match="image not found"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("trainer", BACKENDS)
@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_predict_json_gives_each_image_its_top_k_labels_and_scores_with_checkpoint_backend_and_inversion(
    trained, trainer, tmp_path
):
    ckpt, _, _ = trained(trainer)
    png = write_trouser_png(tmp_path / "trouser.png")
    result = cli("predict", "--backend", OTHER[trainer], ckpt, png, "--test-index", 0, "--top", 10, "--json")
    assert_ok(result)
    document = json.loads(result.stdout)  # one document, nothing else on stdout
    assert (document["checkpoint"], document["backend"], document["top_k"]) == (str(ckpt), OTHER[trainer], 10)
    assert document["low_confidence_below"] == 0.5
    trouser, test0 = document["images"]
    assert (trouser["image"], trouser["inverted"], trouser["true_label"]) == (str(png), False, None)
    assert (test0["image"], test0["inverted"], test0["true_label"]) == ("test[0]", None, "Ankle boot")
    for entry in document["images"]:
        scores = [p["score"] for p in entry["predictions"]]
        assert {p["label"] for p in entry["predictions"]} == set(CLASS_NAMES)  # --top 10: every class
        assert scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1.0) <= 1e-5  # float32 softmax, summed in float64
        assert entry["low_confidence"] == (scores[0] < 0.5)
        assert entry["preprocessed"] is None


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_predict_says_low_confidence_in_text_and_json_when_the_top_score_is_under_one_half(tmp_path, monkeypatch):
    from fashion_twins.cli import predict

    png = write_trouser_png(tmp_path / "trouser.png")
    ckpt = tmp_path / "model.safetensors"
    flat = np.array([[0.46, 0.44] + [0.0125] * 8, [0.50, 0.30] + [0.025] * 8], np.float32)  # (2, 10)
    monkeypatch.setattr(predict, "load_model", lambda twin, args, device: None)
    import fashion_torch.train

    monkeypatch.setattr(fashion_torch.train, "predict_proba", lambda model, images: flat[: len(images)])
    text = cli("predict", "--backend", "torch", ckpt, png, png)
    assert_ok(text)
    first, second = (_parse_prediction(line) for line in text.stdout.splitlines())
    assert first["low"] and first["pred"] == "T-shirt/top"  # 46 % < 50 %
    assert not second["low"]  # exactly 50 % is not under it
    as_json = json.loads(cli("predict", "--backend", "torch", ckpt, png, png, "--json").stdout)
    assert [e["low_confidence"] for e in as_json["images"]] == [True, False]


def readme_json_keys() -> set[str]:
    """The keys README's `predict --json` table documents, as paths: "schema", "images[].predictions[].score"."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("`predict --json` prints one document", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `([a-z_\[\]\.]+)` \|", "|" + section, re.M))


def json_key_paths(document, prefix="") -> set[str]:
    """Every key of a JSON document as a path; a list's items under name[]."""
    paths = set()
    if isinstance(document, dict):
        for key, value in document.items():
            paths.add(prefix + key)
            paths |= json_key_paths(value, prefix + key + ".")
    elif isinstance(document, list):
        for item in document:
            paths |= json_key_paths(item, prefix[:-1] + "[].")
    return paths


def test_predict_json_holds_exactly_the_keys_the_readme_documents_with_its_schema_version(tmp_path, monkeypatch):
    from fashion_twins.cli import predict

    png = write_trouser_png(tmp_path / "trouser.png")
    flat = np.array([[0.46, 0.44] + [0.0125] * 8], np.float32)  # (1, 10)
    monkeypatch.setattr(predict, "load_model", lambda twin, args, device: None)
    import fashion_torch.train

    monkeypatch.setattr(fashion_torch.train, "predict_proba", lambda model, images: flat[: len(images)])
    result = cli("predict", "--backend", "torch", tmp_path / "m.safetensors", png, "--json", "--top", 2)
    assert_ok(result)
    document = json.loads(result.stdout)
    documented = readme_json_keys()
    assert "images[].predictions[].score" in documented and len(documented) == 14  # the table was found whole
    assert json_key_paths(document) == documented
    assert document["schema"] == predict.JSON_SCHEMA == 1
    # scores are fractions, as the README says (the text lines print 46.00%)
    assert [p["score"] for p in document["images"][0]["predictions"]] == pytest.approx([0.46, 0.44])


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_save_preprocessed_writes_the_28x28_image_the_model_saw_and_it_predicts_the_same(trained, tmp_path):
    ckpt, _, _ = trained("torch")
    photo = np.full((300, 200), 255, np.uint8)
    photo[40:260, 60:110] = 30  # a dark leg, off-centre on white paper
    photo[40:260, 120:170] = 30
    photo[40:80, 60:170] = 30
    Image.fromarray(photo).save(tmp_path / "trouser.jpg", quality=90)
    out = tmp_path / "seen"
    first = cli("predict", "--backend", "torch", ckpt, tmp_path / "trouser.jpg", "--save-preprocessed", out, "--json")
    assert_ok(first)
    (entry,) = json.loads(first.stdout)["images"]
    saved = out / "trouser.png"
    assert entry["preprocessed"] == str(saved) and entry["inverted"] is True
    with Image.open(saved) as im:
        assert (im.mode, im.size) == ("L", (28, 28))
        pixels = np.asarray(im)
    np.testing.assert_array_equal(pixels / np.float32(255), load_image(tmp_path / "trouser.jpg"))
    # a 28x28 file is taken as already framed: predicting it again gives the same scores
    again = cli("predict", "--backend", "torch", ckpt, saved, "--json")
    assert json.loads(again.stdout)["images"][0]["predictions"] == entry["predictions"]


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_save_preprocessed_into_a_file_gives_one_error_line(tmp_path):
    png = write_trouser_png(tmp_path / "trouser.png")
    (tmp_path / "taken").write_text("a file")
    result = cli(
        "predict", "--backend", "torch", tmp_path / "m.safetensors", png, "--save-preprocessed", tmp_path / "taken"
    )
    assert_one_error_line(result, "argument --save-preprocessed", "is a file")


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_preprocessed_never_overwrites_an_input_or_an_existing_file_and_says_where_it_wrote(tmp_path, backend):
    ckpt = tmp_path / "m.safetensors"
    rng = np.random.default_rng(0)
    canonical.write_state(
        ckpt, {k: 0.05 * rng.standard_normal(s).astype(np.float32) for k, s in canonical.checkpoint_shapes().items()}
    )
    trouser = write_trouser_png(tmp_path / "trouser.png")  # DIR is the input's own folder: DIR/trouser.png is it
    photo = write_trouser_png(tmp_path / "photo2.jpg")
    theirs = tmp_path / "photo2.png"  # a user's own file, where photo2.jpg's preprocessed image would go
    theirs.write_bytes(b"the user's own photo2.png")
    (tmp_path / "trouser-2.png").symlink_to(trouser)  # a link to an input is taken too
    before = {p: p.read_bytes() for p in (trouser, photo, theirs)}
    result = cli("predict", "--backend", backend, ckpt, trouser, photo, "--save-preprocessed", tmp_path, "--json")
    assert_ok(result)
    assert {p: p.read_bytes() for p in before} == before  # no input and no existing file was written
    saved = [e["preprocessed"] for e in json.loads(result.stdout)["images"]]
    assert saved == [str(tmp_path / "trouser-3.png"), str(tmp_path / "photo2-2.png")]
    for path in saved:
        with Image.open(path) as im:
            assert (im.mode, im.size) == ("L", (28, 28))
    assert result.stderr.splitlines() == [
        f"note: {tmp_path / 'trouser.png'} exists and is kept; {trouser} as the model saw it goes to {saved[0]}",
        f"note: {theirs} exists and is kept; {photo} as the model saw it goes to {saved[1]}",
    ]


def test_format_prediction_lists_the_top_k_classes_in_descending_order():
    probs = np.full(10, 0.01, np.float32)
    probs[7], probs[5] = 0.80, 0.12  # Sneaker, then Sandal
    line = format_prediction("flax", "shoe.png", probs, top=3, true_label=7)
    assert (
        line == "[flax] shoe.png  pred Sneaker  true Sneaker  top-3: Sneaker 80.00%, Sandal 12.00%, T-shirt/top 1.00%"
    )
    low = format_prediction("flax", "shoe.png", probs, top=1, low_confidence=True)
    assert low == "[flax] shoe.png  pred Sneaker  low confidence  top-1: Sneaker 80.00%"


# ----------------------------------------------------------------------------- lockstep


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_lockstep_reports_twins_within_1e_5_and_writes_every_step(tmp_path):
    out = tmp_path / "lockstep.json"
    result = cli("lockstep", "--steps", "20", "--weight-every", "10", "--out", out)
    assert_ok(result)
    assert result.stdout.startswith(
        "[lockstep] 20 steps, sgd lr 0.001 momentum 0.0 batch 64, float32, highest: max |loss diff| "
    )
    figures = json.loads(out.read_text())
    assert len(figures["loss_diff"]) == 20 and figures["weight_steps"] == [0, 10, 20]
    assert figures["dtype"] == "float32" and figures["config"]["momentum"] == 0.0
    # fp32 rounding of differently ordered sums only (see tests/test_train.py's lockstep test)
    assert figures["max_loss_diff"] <= 1e-5 and figures["final_weight_diff"] <= 1e-5


def test_lockstep_refuses_zero_steps_with_one_error_line():
    assert_one_error_line(cli("lockstep", "--steps", "0"), "argument --steps: must be an integer >= 1, got '0'")


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_lockstep_in_float64_with_momentum_reports_the_twins_equal_to_rounding(tmp_path):
    # the CLI face of tests/test_recipe.py's float64 proof: momentum 0.9 is chaotic in float32, not in float64
    out = tmp_path / "lockstep.json"
    result = cli("lockstep", "--steps", "10", "--momentum", "0.9", "--dtype", "float64", "--out", out)
    assert_ok(result)
    assert "momentum 0.9 batch 64, float64, highest" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["dtype"] == "float64" and figures["max_loss_diff"] <= 1e-12 and figures["final_weight_diff"] <= 1e-12
