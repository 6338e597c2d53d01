"""experiments.noise_robustness: its per-run cache of noisy accuracies, the paired gains
under noise. (Its end-to-end run on study 1's work directory: test_limited_data.py.)"""

import pytest

from experiments import noise_robustness
from experiments._sweep import Cell


@pytest.mark.parametrize("damage", ['{"accuracy": {"0.0": 0.5', '[1, 2]',
                                    '{"accuracy": [], "seconds": 1}'])
def test_a_damaged_noise_cache_is_evaluated_again(tmp_path, monkeypatch, capsys, damage):
    path = tmp_path / noise_robustness.NOISE_FILE
    path.write_text(damage)
    evaluated = []

    def evaluate(state, batches, mesh):
        evaluated.append(batches)
        return 0.25 * batches

    monkeypatch.setattr(noise_robustness._fit, "evaluate", evaluate)
    out = noise_robustness.accuracies(str(tmp_path), lambda: "state", (0.0, 0.1),
                                      lambda s: 1 + 10 * s, mesh=None)
    assert out["accuracy"] == {0.0: 0.25, 0.1: 0.5} and evaluated == [1.0, 2.0]
    assert "unreadable" in capsys.readouterr().err
    # The rewritten cache is whole: the next call evaluates nothing.
    assert noise_robustness.accuracies(str(tmp_path), lambda: "state", (0.0, 0.1),
                                       lambda s: 1 + 10 * s, mesh=None)["accuracy"] == \
        out["accuracy"] and evaluated == [1.0, 2.0]


def test_noise_gains_are_paired_by_seed_per_size_and_sigma():
    acc = {("kd+ce", 0): {0.0: 0.70, 0.1: 0.40}, ("kd+jacobian+ce", 0): {0.0: 0.72, 0.1: 0.35},
           ("kd+ce", 1): {0.0: 0.60, 0.1: 0.30}, ("kd+jacobian+ce", 1): {0.0: 0.64, 0.1: 0.31}}
    per_cell = {Cell(m, 10, s): {"accuracy": a} for (m, s), a in acc.items()}
    rows = noise_robustness.noisy_gains(per_cell, ("kd+ce", "kd+jacobian+ce", "ce"), [10],
                                        [0.0, 0.1], [0, 1])
    got = {r["sigma"]: r["values"] for r in rows}
    assert got[0.0] == pytest.approx([2.0, 4.0]) and got[0.1] == pytest.approx([-5.0, 1.0])
    assert {r["label"] for r in rows} == {"KD + Jacobians + CE vs KD + CE"}
