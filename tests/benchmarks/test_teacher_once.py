"""Smoke test of ``python -m benchmarks.teacher_once`` (tiny sizes; timings not asserted)."""

import json

from benchmarks import teacher_once


def test_quick_run_reports_both_modes_and_the_student_only_step_does_less(tmp_path):
    out = tmp_path / "teacher_once.json"
    result = teacher_once.main(["--quick", "--rounds", "2", "--warmup", "1", "--pause", "0",
                                "--silent", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["mode"] for r in result["rows"]] == ["jm", "jvp_k1"]
    assert "load average" in result["uptime_before"]
    for row in result["rows"]:
        assert row["teacher_step_s"] > 0 and row["targets_step_s"] > 0
        assert row["ratio_targets_over_teacher"] > 0 and row["compute_targets_s"] > 0
        assert len(row["times_s"]["targets"]) == 2
        # Fed the targets, the step runs no teacher: strictly fewer FLOPs (a count, not a
        # timing, so it holds on a loaded machine).
        assert row["flops_targets_step"] < row["flops_teacher_step"]
