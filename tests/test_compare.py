"""The comparison report: end to end with tiny settings, the markdown from a handmade JSON, and a crash mid-run."""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest
from PIL import Image
from twin_data import real_data, separable_set

import fashion_compare.report as report_module
from fashion_common.config import tutorial_config
from fashion_common.data import scale_images
from fashion_common.spec import BACKENDS, CLASS_NAMES
from fashion_compare.benchmark import markdown_table, variant_compile_seconds
from fashion_compare.plots import plot_confusion, smoothed_loss_floor
from fashion_compare.render import render_markdown
from fashion_compare.report import PLOTS, CompareOptions, build_report
from fashion_compare.stages import STAGES, Stage, parity_precisions, predict_classes, stage_data, top_confusions

# 1e-5 at "highest", for the forward figures, the off-kink gradients and the lockstep: fp32 rounding
# of differently ordered sums (tests/test_parity.py measures <= 6e-7 forward; tests/test_train.py
# ~4e-6 over a full lockstep epoch). A layout or transpose bug moves values by ~1e-2.
TOL = 1e-5
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
CHECK_KEYS = {"stage", "name", "value", "tolerance", "passed", "why"}


@pytest.mark.data
@pytest.mark.slow  # the whole report end to end; each stage's computation has its own fast test
def test_compare_report_writes_every_file_with_parity_and_lockstep_within_1e_5(tmp_path):
    options = CompareOptions(
        out_dir=str(tmp_path),
        device="cpu",
        quick_epochs=1,
        limit_train=2048,
        limit_test=500,
        lockstep_steps=20,
        quiet=True,
        tensorboard=str(tmp_path / "tb") if HAVE_TENSORBOARD else None,
    )
    build_report(options, data=real_data(), log=lambda line: None)

    assert {"report.md", "report.json", *PLOTS} <= {p.name for p in tmp_path.iterdir()}
    if HAVE_TENSORBOARD:  # compare --tensorboard: one run per recipe and twin, as train --tensorboard writes
        for twin in BACKENDS:
            assert any(p.name.startswith("events.out.tfevents.") for p in (tmp_path / "tb" / "recipe" / twin).iterdir())
    report = json.loads((tmp_path / "report.json").read_text())  # strict JSON: non-finite numbers are strings
    assert report["status"]["state"] == "complete"
    assert report["status"]["stages_done"] == [
        s.name for s in STAGES if s.name != "distributed"
    ]  # that one: only with --distributed N
    assert report["parameters"]["total"] == (784 + 1) * 512 + (512 + 1) * 512 + (512 + 1) * 10

    assert report["parameters"]["nnx_total"] == report["parameters"]["torch_total"] == report["parameters"]["total"]
    assert all(r["nnx_shape"] == r["flax_shape"] for r in report["parameters"]["rows"])  # kernels [in, out] in both

    # torch vs flax at the top level, torch vs nnx under "nnx": each JAX twin on torch's weights
    for highest in (report["parity"]["highest"], report["parity"]["nnx"]["highest"]):
        assert highest["precision"] == "highest"
        assert max(highest["logits"], highest["loss"], highest["max_layer"]) <= TOL
        # the gradients of every image whose ReLU units sit on the same side of 0 in both twins (see stages.py)
        assert highest["max_grad_checked"] <= TOL
        assert all(v <= TOL for v in (highest.get("off_kink") or highest)["grads"].values())

    for lockstep, twin in ((report["lockstep"], "flax"), (report["lockstep"]["nnx"], "nnx")):
        assert lockstep["twin"] == twin
        assert lockstep["steps"] == 20 and len(lockstep["loss_diff"]) == 20
        assert lockstep["max_loss_diff"] <= TOL and lockstep["final_weight_diff"] <= TOL
        assert "states" not in lockstep  # the final models stay in memory, out of the JSON
    assert report["lockstep"]["loss_torch"] == report["lockstep"]["nnx"]["loss_torch"]  # torch took the same steps

    for twin in BACKENDS:
        assert len(report["training"]["recipe"][twin]["epochs"]) == 1
    assert report["training"]["recipe"]["shortened"] and report["training"]["tutorial"] is None

    # every check has its fields, and each one's verdict is its value against its tolerance
    checks = report["checks"]
    assert len(checks) >= 10 and all(set(c) == CHECK_KEYS for c in checks)
    assert all(c["passed"] == (c["value"] <= c["tolerance"]) for c in checks)
    assert all(c["passed"] for c in checks), [c["name"] for c in checks if not c["passed"]]
    # a cut-down training set is noisier than the tolerance is meant for: no accuracy check then
    assert not any("final test accuracy" in c["name"] for c in checks)

    classes = report["classes"]
    assert classes["class_names"] == list(CLASS_NAMES) and classes["num_test"] == 500
    for twin in BACKENDS:
        confusion = np.array(classes["recipe"][twin]["confusion"])
        assert confusion.shape == (10, 10) and confusion.sum() == 500
        # the confusion matrix of the twin's own predictions gives the accuracy its training loop evaluated
        assert np.trace(confusion) / 500 == pytest.approx(
            report["training"]["recipe"]["final_test_accuracy"][twin], abs=2e-4
        )
        rows = confusion.sum(axis=1)
        per_class = np.array(classes["recipe"][twin]["per_class_accuracy"], dtype=float)
        np.testing.assert_allclose(per_class[rows > 0], (np.diag(confusion) / np.maximum(rows, 1))[rows > 0])
    pairs = [p["twins"] for p in classes["recipe"]["pairs"]]
    assert pairs == [["torch", "flax"], ["torch", "nnx"], ["flax", "nnx"]]
    for pair in classes["recipe"]["pairs"]:  # independent 1-epoch runs: most, not all, images alike
        assert 0.5 < pair["agreement"] <= 1.0
    assert classes["recipe"]["agreement"] == classes["recipe"]["pairs"][0]["agreement"]  # torch–flax, as before
    # the lockstep twins' weights are within 1e-5: at most a near-tie may flip (0 measured here)
    for pair in classes["lockstep"]["pairs"]:
        assert pair["agreement"] >= 0.998 and pair["disagreements"] <= 1, pair

    # on a CPU, parity runs one precision: tf32 would repeat highest's fp32 matmuls, and the report says so
    assert report["parity"]["precisions"] == ["highest"] and "tf32" not in report["parity"]
    # the final models stay in the folder, and load back into a twin that predicts what the report counted
    assert report["checkpoints"] == {
        run: {twin: f"{run}-{twin}.safetensors" for twin in BACKENDS} for run in ("lockstep", "recipe")
    }
    import fashion_flax
    import fashion_flax.train as flax_train

    loaded = fashion_flax.load_checkpoint(tmp_path / "recipe-torch.safetensors")  # the torch file, in the flax twin
    images = scale_images(real_data().test_images[:500])
    predicted = flax_train.predict_proba(loaded, images).argmax(axis=1)
    right = np.mean(predicted == real_data().test_labels[:500])
    assert right == pytest.approx(classes["recipe"]["torch"]["accuracy"], abs=1 / 500)  # at most a near-tie flips

    markdown = (tmp_path / "report.md").read_text()
    assert markdown == render_markdown(report)  # report.md is a function of report.json alone
    assert "| figure | torch − flax, highest |" in markdown and "torch − nnx, highest" in markdown
    assert "on a CPU both frameworks run every float32 matmul" in markdown
    assert "`recipe-torch.safetensors`" in markdown
    assert "label-smoothed cross-entropy (smoothing 0.1)" in markdown and "cannot go below 0.500" in markdown
    lockstep_acc = " / ".join(f"{100 * classes['lockstep'][b]['accuracy']:.2f}%" for b in BACKENDS)
    assert lockstep_acc in markdown  # the lockstep models' accuracy, beside their agreement
    assert "`recipe-nnx.safetensors`" in markdown and "| torch vs flax | torch vs nnx |" in markdown
    for name in PLOTS:
        with Image.open(tmp_path / name) as im:
            im.verify()  # a complete, valid PNG
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
        assert f"]({name})" in markdown


def _handmade_report() -> dict:
    """A small report dict as report.json holds it: header, two checks (one failing), and the classes section."""
    confusion = np.eye(10, dtype=int) * 9
    confusion[6, 0] = 1  # one Shirt taken for a T-shirt/top: Shirt 9 of 10 right
    flax_confusion = np.eye(10, dtype=int) * 10
    flax_confusion[3, 3] = 0  # a test set without Dress images in flax's column: per-class accuracy "nan"
    return {
        "meta": {
            "date": "2026-01-01T00:00:00+00:00",
            "mode": "quick",
            "device": "cpu",
            "device_name": "cpu (test)",
            "platform": "test",
            "versions": {"python": "3.11"},
            "command": "handmade",
            "options": {"seed": 7},
        },
        "status": {"state": "complete", "stages_done": ["classes"]},
        "timings": {"classes_seconds": 1.25},
        "checks": [
            {
                "stage": "parity",
                "name": "parity at highest: logits, max |torch − flax|",
                "value": 3e-7,
                "tolerance": 1e-5,
                "passed": True,
                "why": "fp32 rounding",
            },
            {
                "stage": "lockstep",
                "name": "lockstep: loss",
                "value": "nan",
                "tolerance": 1e-5,
                "passed": False,
                "why": "NaN fails",
            },
        ],
        "plots": ["confusion.png"],
        "classes": {
            "class_names": list(CLASS_NAMES),
            "num_test": 91,
            "recipe": {
                "torch": {
                    "confusion": confusion.tolist(),
                    "per_class_accuracy": [1.0] * 6 + [0.9] + [1.0] * 3,
                    "accuracy": 90 / 91,
                },
                "flax": {
                    "confusion": flax_confusion.tolist(),
                    "per_class_accuracy": [1.0] * 3 + ["nan"] + [1.0] * 6,
                    "accuracy": 1.0,
                },
                "nnx": {
                    "confusion": confusion.tolist(),
                    "per_class_accuracy": [1.0] * 6 + [0.9] + [1.0] * 3,
                    "accuracy": 90 / 91,
                },
                "pairs": [
                    {"twins": ["torch", "flax"], "agreement": 0.875, "disagreements": 11, "both_right": 0.8},
                    {"twins": ["torch", "nnx"], "agreement": 1.0, "disagreements": 0, "both_right": 0.9},
                    {"twins": ["flax", "nnx"], "agreement": 0.875, "disagreements": 11, "both_right": 0.8},
                ],
                "agreement": 0.875,
                "disagreements": 11,
                "both_right": 0.8,
                "accuracy_diff_pp": 1.1,
                "per_class_diff_pp": [0.0] * 3 + ["nan", 0.0, 0.0, 10.0] + [0.0] * 3,
                "top_confusions": [{"true": 6, "predicted": 0, "torch": 1, "flax": 0, "nnx": 1}],
            },
            "lockstep": {
                "torch": {"confusion": confusion.tolist(), "per_class_accuracy": [1.0] * 10, "accuracy": 0.5},
                "flax": {"confusion": confusion.tolist(), "per_class_accuracy": [1.0] * 10, "accuracy": 0.5},
                "nnx": {"confusion": confusion.tolist(), "per_class_accuracy": [1.0] * 10, "accuracy": 0.5},
                "agreement": 1.0,
                "disagreements": 0,
                "both_right": 0.5,
                "accuracy_diff_pp": 0.0,
                "per_class_diff_pp": [0.0] * 10,
                "top_confusions": [],
            },
        },
    }


def test_markdown_rendered_from_a_handmade_json_states_each_check_its_tolerance_and_the_class_tables():
    markdown = render_markdown(_handmade_report())

    assert "1 of 2 checks passed" in markdown
    assert (
        "| 1 | parity at highest: logits, max \\|torch − flax\\| | 3.00e-07 | ≤ 1e-05 | yes | fp32 rounding |"
        in markdown
    )
    assert "| 2 | lockstep: loss | nan | ≤ 1e-05 | **NO** | NaN fails |" in markdown
    assert "| class | torch | flax | nnx | max Δ pp |" in markdown
    assert "| 6 Shirt | 90.00% | 100.00% | 90.00% | 10.00 |" in markdown
    assert "| 3 Dress | — | — | — | — |" in markdown  # a class without test images has no accuracy, not 0%
    assert "| Shirt → T-shirt/top | 1 | 0 | 1 |" in markdown  # the one confusion listed, for every twin
    assert "| **all** | **98.90%** | **100.00%** | **98.90%** | 1.10 |" in markdown
    # independent twins, each pair: agreement, images that differ, both right, and each model's accuracy
    assert "| torch – flax | 87.50% | 11 | 80.00% | torch 98.90%, flax 100.00% |" in markdown
    assert "| torch – nnx | 100.00% | 0 | 90.00% | torch 98.90%, nnx 98.90% |" in markdown
    assert "| flax – nnx | 87.50% | 11 | 80.00% | flax 100.00%, nnx 98.90% |" in markdown
    # the lockstep twins agree fully (an older report has the torch–flax pair only), and the reader sees beside
    # it that they are right on half the images
    assert "| torch – flax | 100.00% | 0 | 50.00% | torch 50.00%, flax 50.00% |" in markdown
    right_on = (
        "and are right on (test accuracy torch / flax / nnx, after the tutorial recipe) | 50.00% / 50.00% / 50.00%"
    )
    assert right_on in markdown
    assert "](confusion.png)" in markdown
    assert "**seed**: 7" in markdown
    # the report speaks about the twins, never about how the project was run
    for word in ("issue", "claim", "helper", "brief"):
        assert word not in markdown.lower()


def test_markdown_of_a_report_with_no_stage_done_has_the_header_and_no_sections():
    report = _handmade_report()
    for key in ("checks", "classes", "timings", "plots"):
        report.pop(key)
    report["status"] = {"state": "failed in stage 1/7 data (DataError: missing)", "stages_done": []}

    markdown = render_markdown(report)

    assert "failed in stage 1/7 data (DataError: missing) (stages done: none)" in markdown
    assert "## Checks" not in markdown and "## 7." not in markdown and ".png" not in markdown


def test_a_stage_that_fails_leaves_report_json_with_earlier_stages_and_where_it_stopped(tmp_path, monkeypatch):
    def boom(run):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(
        report_module, "STAGES", (Stage("data", stage_data, lambda run: ""), Stage("boom", boom, lambda run: ""))
    )
    options = CompareOptions(out_dir=str(tmp_path), device="cpu", parity_images=4, quiet=True)

    with pytest.raises(RuntimeError, match="disk on fire"):
        build_report(options, data=separable_set(), log=lambda line: None)

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == {
        "state": "failed in stage 2/2 boom (RuntimeError: disk on fire)",
        "stages_done": ["data"],
    }
    assert report["data"]["num_train"] == 200 and report["data"]["source"] == "synthetic"
    assert "failed in stage 2/2 boom" in (tmp_path / "report.md").read_text()


def test_each_twin_predicts_the_same_classes_with_its_own_code_from_the_same_weights():
    import torch

    import fashion_flax.train as flax_train
    import fashion_nnx.train as nnx_train
    import fashion_torch
    import fashion_torch.train as torch_train

    data = separable_set(n_per_class=4)  # 20 test images, (20, 28, 28) uint8
    config = tutorial_config(epochs=1, device="cpu", seed=3)
    t_state = torch_train.create_train_state(config)
    f_state = flax_train.create_train_state(config, state_dict=fashion_torch.to_state_dict(t_state.model))
    n_state = nnx_train.create_train_state(config, state_dict=fashion_torch.to_state_dict(t_state.model))

    torch_classes = predict_classes("torch", t_state, data.test_images, batch_size=7)  # batches of 7, 7, 6
    flax_classes = predict_classes("flax", f_state, data.test_images)

    assert torch_classes.shape == (20,) and torch_classes.dtype == np.int64
    np.testing.assert_array_equal(torch_classes, flax_classes)
    np.testing.assert_array_equal(torch_classes, predict_classes("nnx", n_state, data.test_images, batch_size=6))
    with torch.no_grad():
        logits = t_state.model(torch.as_tensor(data.test_images, dtype=torch.float32) / 255)  # (20, 10)
    np.testing.assert_array_equal(torch_classes, logits.argmax(1).numpy())  # argmax of softmax = argmax of logits


def test_top_confusions_are_the_largest_off_diagonal_cells_of_all_twins_together():
    t = np.diag([5, 5, 5])
    f = np.diag([5, 5, 5])
    n = np.diag([5, 5, 5])
    t[2, 0], f[2, 0], n[2, 0] = 3, 1, 1  # together 5: first
    t[0, 1], f[1, 0] = 2, 2  # together 2 each: ties in row-major order
    n[1, 2] = 1  # together 1: left out at k=3

    got = top_confusions({"torch": t, "flax": f, "nnx": n}, k=3)

    assert got == [
        {"true": 2, "predicted": 0, "torch": 3, "flax": 1, "nnx": 1},
        {"true": 0, "predicted": 1, "torch": 2, "flax": 0, "nnx": 0},
        {"true": 1, "predicted": 0, "torch": 0, "flax": 2, "nnx": 0},
    ]
    assert top_confusions({b: np.diag([3, 3]) for b in BACKENDS}) == []  # no confusion at all: no rows


def test_check_values_print_small_differences_in_scientific_notation_and_others_as_they_read():
    report = _handmade_report()
    report["checks"] = [
        {"stage": "training", "name": "accuracy", "value": 0.15, "tolerance": 0.5, "passed": True, "why": "noise"},
        {
            "stage": "lockstep",
            "name": "weights",
            "value": 5.27e-7,
            "tolerance": 1e-5,
            "passed": True,
            "why": "rounding",
        },
    ]
    markdown = render_markdown(report)
    assert "| 1 | accuracy | 0.15 | ≤ 0.5 | yes | noise |" in markdown
    assert "| 2 | weights | 5.27e-07 | ≤ 1e-05 | yes | rounding |" in markdown


def test_parity_runs_tf32_only_where_it_differs_from_highest():
    assert parity_precisions("cpu") == ("highest",)
    assert parity_precisions("gpu") == ("highest", "tf32")


def test_the_label_smoothed_loss_floor_is_the_smoothed_target_entropy_and_torch_reaches_it_there():
    import torch
    import torch.nn.functional as F

    # s = 0.1, 10 classes: 0.91 on the true class, 0.01 on each other one
    expected = -0.91 * np.log(0.91) - 9 * 0.01 * np.log(0.01)
    assert smoothed_loss_floor(0.1) == pytest.approx(expected, abs=1e-12) and round(expected, 3) == 0.500
    assert smoothed_loss_floor(0.0) == 0.0
    target = torch.full((1, 10), 0.01, dtype=torch.float64)
    target[0, 3] = 0.91
    at_floor = F.cross_entropy(target.log(), torch.tensor([3]), label_smoothing=0.1).item()
    sharper = F.cross_entropy(torch.tensor([[0.0] * 3 + [20.0] + [0.0] * 6]), torch.tensor([3]), label_smoothing=0.1)
    assert at_floor == pytest.approx(smoothed_loss_floor(0.1), abs=1e-12)  # the best model sits on the floor
    assert sharper.item() > at_floor + 1.0  # a surer model pays for the smoothed mass it denies


def test_the_confusion_figure_has_a_panel_per_twin_and_one_per_pair_where_red_means_the_first_twin_does_worse():
    from fashion_compare.plots import confusion_figure

    entry = _handmade_report()["classes"]["recipe"]  # torch misses one Shirt; flax has no Dress image; nnx = torch
    fig = confusion_figure(entry, CLASS_NAMES, "handmade")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles[:3]] == ["torch twin", "flax twin", "nnx twin"]
    assert [t.split(" (")[0] for t in titles[3:]] == ["torch − flax", "torch − nnx", "flax − nnx"]
    pair_axes = [ax for ax in fig.axes if " − " in ax.get_title()]
    colour = {ax.get_title().split(" (")[0]: np.asarray(ax.get_images()[0].get_array()) for ax in pair_axes}
    # torch − flax: the Dress diagonal (torch 9 right, flax 0) is torch doing better: blue (< 0); the Shirt taken
    # for a T-shirt (torch 1, flax 0) is torch doing worse off the diagonal: red (> 0); torch's 9 against flax's 10
    # on the T-shirt diagonal is torch doing worse on it: red too. One meaning on and off the diagonal.
    torch_flax = colour["torch − flax"]
    assert torch_flax[3, 3] == -9 and torch_flax[6, 0] == 1 and torch_flax[0, 0] == 1
    assert colour["flax − nnx"][3, 3] == 9  # the same cell seen from flax: flax does worse, red
    assert not colour["torch − nnx"].any()  # equal twins: all white
    with Image.open(io.BytesIO(plot_confusion(entry, CLASS_NAMES, "handmade"))) as im:
        width, height = im.size
    assert 1.3 < width / height < 1.7  # 3 x 2 square panels (a row of four was too wide to read)


def _lockstep_result(loss_diff, weight_diff) -> dict:
    """A lockstep() result as plot_lockstep takes it: per-step |loss diff|, the weight diff every 10 steps."""
    return {
        "loss_diff": list(loss_diff),
        "weight_steps": list(range(0, 10 * len(weight_diff), 10)),
        "weight_diff": list(weight_diff),
        "steps": len(loss_diff),
        "tolerance": 1e-5,
        "weight_every": 10,
        "config": {"lr": 1e-3, "batch_size": 64},
        "precision": "highest",
    }


def test_the_lockstep_figure_keeps_its_legend_off_the_axes_ticks_each_exact_step_and_says_when_lines_coincide():
    from fashion_compare.plots import lockstep_figure

    loss_diff = [3e-7, 0.0, 1e-7, 0.0, 0.0] + [1e-8] * 45  # the only rise is in the first steps
    same = _lockstep_result(loss_diff, [0.0, 1e-8, 2e-8, 3e-8, 4e-8])
    fig = lockstep_figure({"flax": same, "nnx": dict(same)})
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1  # the legend is below the axes
    ticks = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines() if line.get_marker() == "|"}
    assert ticks == {
        "a step where loss flax = loss torch exactly (3 of 50)": [2, 4, 5],
        "a step where loss nnx = loss torch exactly (3 of 50)": [2, 4, 5],
    }
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert any("the lines coincide" in t for t in notes)
    apart = _lockstep_result([2e-7] + loss_diff[1:], [0.0, 1e-8, 2e-8, 3e-8, 4e-8])
    fig = lockstep_figure({"flax": same, "nnx": apart})
    assert not any("coincide" in t.get_text() for t in fig.axes[0].texts)


def _timing_report(machine: dict | None) -> dict:
    epochs = {"torch": [5.0, 3.0, 3.1, 3.3], "flax": [9.0, 2.5, 2.6, 2.4], "nnx": [10.0, 2.7, 2.8, 2.9]}
    recipe = {"config": {"batch_size": 64}}
    recipe.update(
        {b: {"epochs": [{"epoch": i + 1, "epoch_seconds": v} for i, v in enumerate(s)]} for b, s in epochs.items()}
    )
    if machine is not None:
        recipe["machine"] = machine
    return {"recipe": recipe}


def test_the_epoch_times_legend_medians_leave_out_the_compile_epoch_and_a_busy_run_is_warned_inside_the_figure():
    from fashion_common.runtime import BUSY_WARNING
    from fashion_compare.plots import epoch_times_figure

    fig = epoch_times_figure(_timing_report({"busy": True, "others_cpu_share": 0.62}))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    # flax: epochs 2-4 are 2.5, 2.6, 2.4 -> 2.50; with epoch 1's 9.0 s the median would be 2.55
    assert labels == [
        "torch (median 3.10 s over epochs 2-4, epoch 1 5.00 s)",
        "flax (median 2.50 s over epochs 2-4, epoch 1 9.00 s)",
        "nnx (median 2.80 s over epochs 2-4, epoch 1 10.00 s)",
    ]
    (warning,) = [t.get_text() for t in fig.axes[0].texts if BUSY_WARNING in t.get_text()]
    assert "other processes took 62% of the cores" in warning
    quiet = epoch_times_figure(_timing_report({"busy": False, "others_cpu_share": 0.05}))
    assert not [t for t in quiet.axes[0].texts if BUSY_WARNING in t.get_text()]
    assert not [t for t in epoch_times_figure(_timing_report(None)).axes[0].texts if BUSY_WARNING in t.get_text()]


def test_the_activation_grid_gives_softmax_rows_where_every_output_and_gradient_is_exercised():
    from fashion_compare.parity import SOFTMAX_ROWS, activation_grid
    from fashion_compare.render import _md_activations

    grid = activation_grid()
    softmax = grid["functions"]["softmax"]
    values, grads = np.array(softmax["torch"]), np.array(softmax["grad_torch"])  # (3, 7) each
    # over the old single vector holding 1e4 every output but one was exactly 0, and so was its gradient
    assert values.shape == SOFTMAX_ROWS.shape and values.min() > 1e-3 and np.abs(grads).min() > 1e-3
    np.testing.assert_allclose(values[1], values[0], atol=1e-3)  # shifted by 1e4: the same softmax, no overflow
    markdown = "\n".join(_md_activations(grid))
    assert "| 2 | 9997.5, 9999, 10000, 10000, 10000, 10001, 10002 |" in markdown
    assert "softmax torch" not in markdown  # no longer a column of the grid table


TWO_TWIN_WORDS = ("both twins", "either twin", "two independent runs", "twinned in pytorch and flax")


def test_help_texts_the_report_and_the_package_description_never_speak_of_two_twins_where_three_run():
    import argparse
    import re
    from pathlib import Path

    from fashion_twins.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    texts.append(render_markdown(_handmade_report()))
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    description = re.search(r'^description = "(.*)"$', pyproject, re.M).group(1)  # tomllib is Python 3.11+
    texts.append(description)
    found = [
        (words, text[:60]) for text in texts for words in TWO_TWIN_WORDS if words in " ".join(text.lower().split())
    ]
    assert found == []
    assert "three twins" in description


def test_the_report_header_names_the_cpu_once_and_a_gpu_beside_its_kind():
    from fashion_compare import device_label
    from fashion_compare.render import device_text

    report = _handmade_report()
    report["meta"]["device_name"] = device_label("cpu")
    header = [line for line in render_markdown(report).splitlines() if line.startswith("- **device**")]
    assert header == [f"- **device**: {device_label('cpu')}"] and "cpu — cpu" not in header[0]
    assert device_text("gpu", "torch: NVIDIA H200; jax: NVIDIA H200") == "gpu — torch: NVIDIA H200; jax: NVIDIA H200"


def test_benchmark_measures_flax_compile_time_apart_and_shows_it():
    data = separable_set(n_per_class=50)  # 7 batches of 64: compile cost does not depend on the data size
    compile_s = variant_compile_seconds("flax", data, "cpu")
    # XLA compiles the epoch's lax.scan cold: measured 2.2-4.0 s on the busy 2-core CPU, never under 0.05 s
    assert compile_s > 0.05
    assert variant_compile_seconds("tutorial", data, "cpu") is None  # the tutorial's eager loop compiles nothing
    row = {"tutorial_compile_s": None, "flax_compile_s": compile_s, "torch_eager_compile_s": 0.01, "nnx_compile_s": 0.5}
    times = {f"{k}_{x}": 1.0 for k in ("tutorial", "flax", "torch_eager", "floor") for x in ("s", "step_ms")}
    times.update(nnx_s=1.25, nnx_step_ms=1.25, nnx_min_s=1.0, nnx_max_s=1.5)
    table = markdown_table(
        [
            {
                "device": "cpu",
                "precision": "fp32",
                "torch_default_engine": "eager",
                "torch_engines": ["eager"],
                **times,
                **row,
            }
        ]
    )
    assert f"| {compile_s:.2f} s |" in table and "| - (none) |" in table
    # the NNX twin's row, timed in the same rounds: its median (min–max), compile seconds and ratio to flax
    assert "| nnx (nnx.jit, split/merge + lax.scan) | 1.250 s (1.00–1.50) | 1.25 ms | 0.50 s | 1.25 | 1.25 |" in table
