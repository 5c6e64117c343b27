"""End-to-end check of the demo: both runs train, the JSON is complete, and the plan it records
comes from the quantized graphs (so a policy that silently stopped quantizing would fail here)."""

import json
import math

import pytest

from qcompile import demo


@pytest.mark.slow
def test_demo_trains_fp32_and_quantized_side_by_side(tmp_path):
    out = tmp_path / "r.json"
    # 400 images, batch 16 -> 20 steps: the run is dominated by compile time, not training.
    argv = ["--epochs", "1", "--limit", "400", "--batch-size", "16", "--no-progress", "--json", str(out)]
    assert demo.main(argv) == 0

    result = json.loads(out.read_text())
    runs = {r["policy"]: r for r in result["runs"]}
    assert set(runs) == {"fp32", "luq-int4"}
    for r in runs.values():
        assert len(r["step_losses"]) == 20
        assert all(math.isfinite(x) for x in r["step_losses"])
        assert math.isfinite(r["final_train_loss"])
        assert 0.0 <= r["test_accuracy"] <= 1.0
    assert runs["fp32"]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1

    fp32_plan, q_plan = runs["fp32"]["plan"], runs["luq-int4"]["plan"]
    assert fp32_plan["totals"]["quantized_gemms"] == 0
    assert q_plan["policies"] == ["luq-int4"]
    assert q_plan["totals"]["quantized_gemms"] >= 1
    assert q_plan["totals"]["backward_low_bit_share"] > 0.5
    # The quantized run saw the same batches from the same weights: its first loss matches FP32's
    # up to quantization noise (a different init or batch order would not).
    assert runs["luq-int4"]["step_losses"][0] == pytest.approx(runs["fp32"]["step_losses"][0], rel=0.1)
