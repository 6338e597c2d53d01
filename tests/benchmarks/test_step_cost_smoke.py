"""Smoke test of ``python -m benchmarks.step_cost``: it runs and writes its three outputs.

Tiny mode (SmallCNN of width 4 on 8x8 inputs, batch 4, two modes, two rounds): a few
seconds. Timings are reported by the benchmark, never asserted here (a shared CPU makes
them noise); only the structure of the results is checked.
"""

import json

from benchmarks import step_cost


def test_quick_run_writes_json_markdown_and_plot(tmp_path):
    # --no-torch: the PyTorch side-by-side (when torch is installed) takes most of the time
    # of a quick run and is not what this smoke test checks.
    args = ["--quick", "--modes", "kd,jm_top1", "--rounds", "2", "--warmup", "1", "--pause", "0",
            "--out", str(tmp_path), "--silent", "--no-torch"]
    result = step_cost.main(args)

    rows = result["rows"]
    assert [r["mode"] for r in rows] == ["kd", "jm_top1"]
    for row in rows:
        assert row["time_s"] > 0 and row["flops"] > 0 and row["peak_bytes"] > 0
        assert len(row["times_s"]) == 2
        assert {"time_ratio_kd", "flop_ratio_kd", "peak_ratio_kd"} <= set(row)
        assert "jax_over_torch" not in row
    # Jacobian matching does strictly more work than KD (a FLOP count, not a timing).
    assert rows[1]["flop_ratio_kd"] > 1.0

    saved = json.loads((tmp_path / "step_cost_quick.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert {"date", "jax", "processor", "command"} <= set(saved["environment"])
    table = (tmp_path / "step_cost_quick.md").read_text()
    assert "| jm_top1 |" in table
    assert (tmp_path / "step_cost_quick.png").stat().st_size > 0
