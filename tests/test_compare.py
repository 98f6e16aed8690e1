"""The comparison report end to end, in-process, with tiny settings: every file written, every figure within tolerance."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fashion_compare.report import PLOTS, CompareOptions, build_report
from twin_data import real_data

# 1e-5 at "highest", for the forward figures, the off-kink gradients and the lockstep: fp32 rounding
# of differently ordered sums (tests/test_parity.py measures <= 6e-7 forward; tests/test_train.py
# ~4e-6 over a full lockstep epoch). A layout or transpose bug moves values by ~1e-2.
TOL = 1e-5


@pytest.mark.data
def test_compare_report_writes_every_file_with_parity_and_lockstep_within_1e_5(tmp_path):
    options = CompareOptions(
        out_dir=str(tmp_path), device="cpu", quick_epochs=1, limit_train=2048, limit_test=500, lockstep_steps=20, quiet=True
    )
    build_report(options, data=real_data(), log=lambda line: None)

    assert {"report.md", "report.json", *PLOTS} <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "report.json").read_text())  # strict JSON: non-finite numbers are strings
    assert report["status"]["state"] == "complete"
    assert report["parameters"]["total"] == (784 + 1) * 512 + (512 + 1) * 512 + (512 + 1) * 10

    highest = report["parity"]["highest"]
    assert highest["precision"] == "highest"
    assert max(highest["logits"], highest["loss"], highest["max_layer"]) <= TOL
    # the gradients of every image whose ReLU units sit on the same side of 0 in both twins (see report.py)
    assert highest["max_grad_checked"] <= TOL
    assert all(v <= TOL for v in (highest.get("off_kink") or highest)["grads"].values())

    lockstep = report["lockstep"]
    assert lockstep["steps"] == 20 and len(lockstep["loss_diff"]) == 20
    assert lockstep["max_loss_diff"] <= TOL and lockstep["final_weight_diff"] <= TOL

    for twin in ("torch", "flax"):
        assert len(report["training"]["recipe"][twin]["epochs"]) == 1
    assert report["training"]["recipe"]["shortened"] and report["training"]["tutorial"] is None

    markdown = (tmp_path / "report.md").read_text()
    for name in PLOTS:
        with Image.open(tmp_path / name) as im:
            im.verify()  # a complete, valid PNG
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
        assert f"]({name})" in markdown
