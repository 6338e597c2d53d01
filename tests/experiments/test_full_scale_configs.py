"""The GPU/TPU configs parse and build: models by eval_shape, objectives, tap sizes."""

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import _cli, _fit, _study, limited_data, transfer


def _forward(make, x):
    """Shapes of ``(logits, features)`` of the model ``make()`` builds, allocating nothing."""
    graphdef, state = nnx.split(nnx.eval_shape(make))
    return jax.eval_shape(
        lambda state, x: nnx.merge(graphdef, state)(x, return_features=True), state, x)


def test_cifar100_config_builds():
    config, _ = _cli.parse(["--config=limited_data_cifar100"], study="limited_data",
                           default_config="limited_data_digits", default_workdir="x")
    assert config.dataset == "cifar100"
    assert tuple(config.examples_per_class) == (10, 50, "all")
    cells = limited_data.cells(config)
    assert len(cells) == len(config.methods) * 3 * config.num_seeds
    for method in config.methods:
        limited_data.build_objective(method, config.loss)
    _fit.build_optimizer(config.train)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    for spec in (config.teacher, config.student):
        logits, _ = _forward(lambda spec=spec: _fit.build_model(
            spec, image_shape=(32, 32, 3), num_classes=100, seed=0), x)
        assert logits.shape == (2, 100)
    # Paper numbers are shown for CIFAR-100 only.
    assert limited_data.paper_number("cifar100", "logits+jacobian+ce", 10) == 39.55
    assert limited_data.paper_number("digits", "logits+jacobian+ce", 10) is None


def test_transfer_folder_config_builds_and_taps_match():
    config, _ = _cli.parse(
        ["--config=transfer_folder", "--config.target_dataset=folder:/somewhere"],
        study="transfer", default_config="transfer_digits", default_workdir="x")
    shape = (*config.image_size, 3)
    for method in config.methods:
        transfer.build_objective(method, config.loss)
    assert transfer.paper_number(config.paper_table, "lwf", 25) == 45.08

    class Source:
        image_shape, num_classes = shape, 1000

    class Target:
        image_shape, num_classes = shape, 67

    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    t_logits, t_feats = _forward(lambda: _fit.build_model(
        config.teacher, image_shape=shape, num_classes=1000, seed=0), x)
    data = _study.StudyData(Source, Target)
    s_logits, s_feats = _forward(lambda: transfer.make_student(config, data, "lwf", 0), x)
    o_logits, _ = _forward(lambda: transfer.make_student(config, data, "finetune", 0), x)
    assert t_logits.shape == (2, 1000) and s_logits.shape == (2, 67)
    assert o_logits.shape == (2, 67)
    assert s_feats[transfer.SOURCE_TAP].shape == (2, 1, 1, 1000)
    for layer in (*config.loss.attention.layers, config.loss.attention_jacobian.layer):
        assert s_feats[layer].shape[1:3] == t_feats[layer].shape[1:3], layer
