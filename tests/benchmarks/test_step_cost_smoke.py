"""Smoke tests of ``python -m benchmarks.step_cost`` and the pieces it is built from.

Timings are reported by the benchmark, never asserted (a shared CPU makes them noise);
only structure, FLOP counts, units, the plan, the output folder and the re-rendering of a
committed run are checked (the user-model modes and the hand-written loss:
``test_user_models.py``). The end-to-end run uses the tiny ``--quick`` sizes (8x8 images,
batch 4, width 4) and two modes, and runs both core budgets (two subprocesses); PyTorch is
left out (the suite does not need torch); ``test_torch_user_steps_run`` covers it where
installed.
"""

import json
import os

import pytest

from benchmarks import _harness, _step_report, _user_models, step_cost

RESULTS = os.path.join(_harness.REPO, "benchmarks", "results")


def test_quick_run_writes_results_for_both_budgets(tmp_path):
    args = ["--quick", "--budgets", "all,one", "--modes", "kd,jm", "--other-modes", "kd,jm",
            "--rounds", "2", "--warmup", "1", "--pause", "0", "--out", str(tmp_path),
            "--silent", "--no-torch"]
    result = step_cost.main(args)

    rows = result["rows"]
    assert [(r["budget"], r["mode"]) for r in rows] == [
        ("all", "kd"), ("all", "jm"), ("one", "kd"), ("one", "jm")]
    budgets = {b["budget"]: b for b in result["environment"]["budgets"]}
    assert budgets["one"]["jax_devices"] == 1 and len(budgets["one"]["pinned_cores"]) == 1
    assert "intra_op_parallelism_threads=1" in budgets["one"]["XLA_FLAGS"]
    assert budgets["all"]["jax_devices"] == step_cost.device_count(
        step_cost.available_cores(), [4], None)
    for row in rows:
        assert row["time_s"] > 0 and row["flops"] > 0 and row["peak_bytes"] > 0
        assert len(row["times_s"]) == 2
        assert "jax_over_torch" not in row
    kd, jm = rows[2], rows[3]  # one device: whole-program counts
    # Jacobian matching does strictly more work than KD: a FLOP count, not a timing.
    assert jm["flop_ratio_kd"] > 1.0 and kd["flop_ratio_kd"] == 1.0
    assert {t["target"] for t in result["targets"]} >= {
        "[all] exact JM (label) / KD (time)", "[one] exact JM (label) / KD (time)"}
    # Tiny --quick sizes are not the targets' setting: no met / not met verdicts.
    assert all(t["met"] is None for t in result["targets"])

    saved = json.loads((tmp_path / "step_cost.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert {"date", "jax", "processor", "cores", "git_commit", "command"} <= set(
        saved["environment"])
    table = (tmp_path / "step_cost.md").read_text()
    assert "| one | user_avg | 4 | jax | jm |" in table
    # The tiny step's counts are printed with units, never as zeros.
    assert "0.00 GFLOP" not in table and " 0 MiB" not in table
    assert (tmp_path / "step_cost.png").stat().st_size > 0


def test_quick_run_writes_outside_the_repository_by_default():
    # A smoke run must not leave untracked files in benchmarks/results.
    args = step_cost.parse_args(["--quick"])
    try:
        assert not os.path.abspath(args.out).startswith(os.path.abspath(_harness.REPO))
        assert os.path.isdir(args.out) and not os.listdir(args.out)
    finally:
        os.rmdir(args.out)
    assert step_cost.parse_args([]).out == RESULTS


def test_every_mode_of_the_tables_is_a_choice_of_the_command_line():
    args = step_cost.parse_args(["--modes", ",".join(_user_models.MODES), "--no-torch"])
    assert args.modes.split(",") == list(_user_models.MODES)
    with pytest.raises(SystemExit):
        step_cost.parse_args(["--modes", "kd,not_a_mode"])


def test_plan_gives_pytorch_only_the_modes_it_has_a_twin_of():
    args = step_cost.parse_args(
        ["--budgets", "all", "--user-cases", "user_avg", "--modes", "kd,jm,jm_hand",
         "--torch-modes", "kd,jm,jm_hand", "--zoo-models", "cnn",
         "--zoo-modes", "kd,jm_top1,jm_top1_rof", "--torch", "--devices", "1"])
    (job,) = step_cost.plan(args)
    torch_steps = {(g["name"], s["mode"]) for g in job["groups"] for s in g["steps"]
                   if s["framework"] == "torch"}
    # jm_hand is JAX only; the reverse-over-forward zoo experiment has no PyTorch twin.
    assert torch_steps == {("user", "kd"), ("user", "jm"), ("zoo_cnn_b32", "kd"),
                           ("zoo_cnn_b32", "jm_top1")}


@pytest.mark.parametrize("tag", ["step_cost_h200"])
def test_a_saved_run_renders_again_to_its_committed_report(tag):
    """The report code still reads the committed JSON: same targets, same Markdown."""
    with open(os.path.join(RESULTS, tag + ".json")) as f:
        saved = json.load(f)
    assert _step_report.targets(saved["rows"]) == saved["targets"]
    with open(os.path.join(RESULTS, tag + ".md")) as f:
        committed = f.read()
    assert _step_report.markdown(saved["rows"], saved["targets"],
                                 saved["environment"]) == committed


@pytest.mark.parametrize("value,text", [(3.2e5, "320 kFLOP"), (5.34e9, "5.34 GFLOP"),
                                        (12.0, "12 FLOP"), (None, "n/a")])
def test_flops_are_printed_with_units(value, text):
    assert _harness.fmt_flops(value) == text


@pytest.mark.parametrize("value,text", [(30413, "29.7 KiB"), (3 * 2**20, "3 MiB"),
                                        (100, "100 B"), (None, "n/a")])
def test_bytes_are_printed_with_units(value, text):
    assert _harness.fmt_bytes(value) == text


def test_device_count_is_one_per_core_dividing_every_batch():
    assert step_cost.device_count(2, [64, 32], None) == 2
    assert step_cost.device_count(6, [64], None) == 4
    assert step_cost.device_count(16, [64, 32], None) == 16
    assert step_cost.device_count(16, [64], 3) == 2


def test_paired_ratio_pairs_rounds():
    # A slow second round hits both steps: paired quotients are all 2, unpaired medians
    # would give 2.5 / 1.5.
    assert _harness.paired_ratio([2.0, 10.0, 4.0], [1.0, 5.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="equally long"):
        _harness.paired_ratio([1.0], [1.0, 2.0])


# torch's forward-mode AD scripts a helper on first use and warns about its own API.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("mode", ["kd", "jm", "jvp_k1", "vjp_k1", "jm_all"])
def test_torch_user_steps_run(mode):
    torch = pytest.importorskip("torch")
    from benchmarks import _torch_reference
    step = _torch_reference.make_user_step("avg", mode, batch=2, image_size=8, num_classes=10,
                                           width=2)
    before = [p.detach().clone() for p in _params_of(step)]
    step()
    after = list(_params_of(step))
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def _params_of(step):
    # The closure holds the optimizer, whose param groups hold the student's parameters.
    opt = next(c.cell_contents for c in step.__closure__
               if type(c.cell_contents).__name__ == "Adam")
    return [p for g in opt.param_groups for p in g["params"]]
