"""Studies 1 and 2 end to end on a tiny config; a re-run skips finished cells."""

import json
import os
import shutil
from pathlib import Path

from experiments import limited_data, noise_robustness
from jaxkd import training


def test_limited_data_then_noise_robustness(tiny, tmp_path):
    config = tiny("limited_data_digits", methods="logits+ce,logits+jacobian+ce",
                  examples_per_class="5,all", noise_sigmas="0,0.5")
    workdir = str(tmp_path)
    summary = limited_data.run(config, workdir)

    for name in ("results.json", "results.csv", "results.md", "accuracy_vs_examples.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    rows = summary["rows"]
    assert len(rows) == 2 * 2 * 2  # methods x sizes x {last, best}
    assert all(r["num_seeds"] == 1 and 0 <= r["mean"] <= 100 for r in rows)
    assert all(r["paper"] is None for r in rows)  # digits is not the paper's setting
    markdown = Path(workdir, "results.md").read_text()
    assert "match activations + Jacobians + CE" in markdown and " ± " in markdown
    # The paired (same seed) gain of adding the Jacobian term, per size and checkpoint.
    gains = summary["paired_gains"]
    assert len(gains) == 2 * 2 and "Gain from the Jacobian term" in markdown
    with_j = {(r["examples_per_class"], r["checkpoint"]): r["mean"] for r in rows
              if r["method"] == "logits+jacobian+ce"}
    without = {(r["examples_per_class"], r["checkpoint"]): r["mean"] for r in rows
               if r["method"] == "logits+ce"}
    for g in gains:
        key = (g["examples_per_class"], g["checkpoint"])
        assert abs(g["mean"] - (with_j[key] - without[key])) < 1e-9

    # Resume: every cell is finished, so nothing trains again.
    result = os.path.join(workdir, "cells", "logits-ce", "n5", "seed0", "result.json")
    before = os.path.getmtime(result)
    again = limited_data.run(config, workdir)
    assert os.path.getmtime(result) == before
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in rows]

    # A cell killed after its last checkpoint but before result.json: the re-run
    # restores the checkpoint (no training) and reports the same numbers.
    cell = os.path.dirname(result)
    metrics_path = os.path.join(cell, training.METRICS_FILE)
    checkpoints = os.path.join(cell, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    assert steps == [6, 12]  # 12 steps, 2 evaluations: a checkpoint every 6 steps
    metrics_before = Path(metrics_path).read_text()
    train_before = training.read_metrics(cell, "train")
    assert [r["step"] for r in train_before] == [6, 12]
    first = json.loads(Path(result).read_text())
    os.remove(result)
    limited_data.run(config, workdir)
    second = json.loads(Path(result).read_text())
    assert second["last"] == first["last"] and second["best"] == first["best"]
    # No step ran: a retrained step would log a new record (with a new examples_per_sec).
    assert Path(metrics_path).read_text() == metrics_before

    # Killed between its checkpoints (the step-12 one never written): the re-run resumes
    # from step 6, not from step 0, and replays steps 7-12 to the same numbers.
    os.remove(result)
    shutil.rmtree(os.path.join(checkpoints, "12"))
    limited_data.run(config, workdir)
    third = json.loads(Path(result).read_text())
    assert third["last"] == first["last"] and third["best"] == first["best"]
    train_after = training.read_metrics(cell, "train")
    # From step 0 there would be a second step-6 record; resumed, the step-6 record is the
    # killed run's own (its wall-clock throughput included) and only step 12 was re-run.
    assert [r["step"] for r in train_after] == [6, 12]
    assert train_after[0] == train_before[0]
    assert train_after[1]["examples_per_sec"] != train_before[1]["examples_per_sec"]
    assert train_after[1]["loss"] == train_before[1]["loss"]
    assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) == [6, 12]
    before = os.path.getmtime(result)

    # Study 2 reuses study 1's students from the same work directory.
    noise = noise_robustness.run(config, workdir)
    assert os.path.getmtime(result) == before
    assert {r["sigma"] for r in noise["rows"]} == {0.0, 0.5}
    clean = [r for r in noise["rows"] if r["sigma"] == 0.0 and r["method"] == "logits+ce"
             and r["examples_per_class"] == 5]
    last = [r for r in rows if r["method"] == "logits+ce" and r["examples_per_class"] == 5
            and r["checkpoint"] == "last"]
    assert abs(clean[0]["mean"] - last[0]["mean"]) < 1e-6  # sigma 0 = the clean test set
    results = json.loads(Path(workdir, "results.json").read_text())
    assert set(results) == {"limited_data", "noise_robustness"}
    assert os.path.getsize(os.path.join(workdir, "accuracy_vs_sigma.png")) > 0
