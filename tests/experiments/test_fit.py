"""experiments._fit: a reused teacher is restored at its own last step, whatever the
current config says."""

import jax
import numpy as np

from experiments import _data, _fit, _runs
from experiments.configs import _base
from jaxkd import training


def test_teacher_dir_restores_the_teachers_own_last_step(tmp_path):
    prepared = _data.load_data("digits")
    spec = _base.model_spec("mlp", hidden=(8,))
    mesh = training.data_mesh(1)
    run_dir = str(tmp_path / "teacher")
    trained_for = _base.train_config(num_steps=4, batch_size=32, num_evals=2)
    teacher, result = _fit.get_teacher(run_dir, spec=spec, train_cfg=trained_for,
                                       prepared=prepared, mesh=mesh, seed=0)
    assert result["last"]["step"] == 4
    # Used under a config that says 2 steps (as a teacher_dir of another run): the
    # restored teacher is the 4-step one, the one its result.json describes.
    says_two = _base.train_config(num_steps=2, batch_size=32, num_evals=1)
    again, again_result = _fit.get_teacher(run_dir, spec=spec, train_cfg=says_two,
                                           prepared=prepared, mesh=mesh, seed=0)
    assert again_result["last"] == result["last"] and again_result["best"] == result["best"]
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(teacher.params)):
        np.testing.assert_array_equal(a, b)
    # And it is the trained state, not the initialisation: its test accuracy is the one
    # result.json reports.
    test = prepared.splits.test
    state = _fit.restore_state(run_dir, _fit.template_state(
        _fit.build_model(spec, image_shape=prepared.image_shape,
                         num_classes=prepared.num_classes, seed=0), says_two, mesh))
    accuracy = _fit.evaluate(state, _data.eval_batches(test.images, test.labels, 500), mesh)
    assert accuracy == result["last"]["test"]
    assert _runs.is_done(run_dir)
