"""Smoke test of ``python -m benchmarks.lockstep --quick``: structure and files, never
timings (a shared CPU makes them noise)."""

import json

from benchmarks import lockstep


def test_quick_run_writes_rows_for_each_member_count(tmp_path):
    result = lockstep.main(["--quick", "--cases", "mlp_digits", "--members", "1,2",
                            "--rounds", "2", "--warmup", "2", "--pause", "0",
                            "--out", str(tmp_path), "--silent"])
    rows = result["rows"]
    assert [(r["case"], r["members"]) for r in rows] == [("mlp_digits", 1),
                                                         ("mlp_digits", 2)]
    for row in rows:
        assert len(row["lockstep_times_s"]) == len(row["sequential_times_s"]) == 2
        assert row["lockstep_students_per_s"] > 0 and row["speedup"] > 0
        assert row["lockstep_peak_bytes"] > 0 and "load average" in row["uptime"]
    assert rows[0]["lockstep_over_m1"] == 1.0
    # Two members hold two sets of parameters: the compiled program needs more memory.
    assert rows[1]["lockstep_peak_bytes"] > rows[0]["lockstep_peak_bytes"]
    saved = json.loads((tmp_path / "lockstep_cpu.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert {"date", "jax", "flax", "processor", "cores", "git_commit", "uptime_before",
            "command"} <= set(saved["environment"])
    table = (tmp_path / "lockstep_cpu.md").read_text()
    assert "| mlp_digits | 2 |" in table and " 0 B" not in table


def test_quick_run_writes_outside_the_repository_by_default():
    result = lockstep.main(["--quick", "--cases", "mlp_digits", "--members", "1",
                            "--rounds", "1", "--warmup", "1", "--pause", "0", "--silent"])
    assert "benchmarks/results" not in result["out"]
