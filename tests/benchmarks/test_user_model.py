"""Smoke test of ``python -m benchmarks.user_model`` at tiny sizes (8x8 images, batch 4).

The three steps are checked for what they compute (library and hand-written losses agree,
KD alone is less) and the command for what it reports; timings are never asserted.
"""

import functools

import jax
import numpy as np

from benchmarks import user_model

TINY = dict(batch_size=4, image_shape=(8, 8, 3))


def test_library_and_hand_written_steps_compute_the_same_update():
    steps, state, batch = user_model.make_steps(**TINY)
    out = {name: step(*state, *batch) for name, step in steps.items()}
    lib_params, _, lib_loss = out["library"]
    hand_params, _, hand_loss = out["hand"]
    np.testing.assert_allclose(hand_loss, lib_loss, rtol=1e-5)
    assert float(out["kd"][2]) < float(lib_loss)  # the Jacobian term adds a positive loss
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 lib_params, hand_params)
    assert user_model.peak_bytes(steps["library"], state, batch) > 0


def test_the_command_times_every_step_and_reports_the_ratios(monkeypatch, capsys):
    monkeypatch.setattr(user_model, "make_steps",
                        functools.partial(user_model.make_steps, **TINY))
    result = user_model.main(["2"])
    assert set(result["median_s"]) == {"library", "hand", "kd"}
    assert all(t > 0 for t in result["median_s"].values())
    assert result["library_over_hand"] > 0 and result["jm_over_kd"] > 0
    assert "library/hand: median ratio per round" in capsys.readouterr().out
