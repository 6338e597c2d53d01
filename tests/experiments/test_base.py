"""experiments.configs._base: the loss terms' configs are their constructors' arguments,
each with words; every config has the shared keys."""

import inspect

import pytest

from experiments import limited_data, transfer
from experiments.configs import _base


@pytest.mark.parametrize("study", [limited_data, transfer], ids=["limited_data", "transfer"])
def test_a_loss_terms_config_is_its_constructors_keyword_arguments(study):
    """Every term of a study's method table has its ``loss.<term>`` default in ``_base``,
    with exactly the arguments its constructor takes (``weight`` and keywords), each
    with words and a check."""
    loss = _base.loss_config()
    for term, (constructor, label) in study.TERMS.items():
        assert term in loss and label, term
        params = inspect.signature(constructor).parameters
        assert set(loss[term]) <= set(params) and "weight" in loss[term], term
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        assert required <= set(loss[term]), term
        for arg in loss[term]:
            assert arg in _base.LOSS_ARGS, (term, arg)
            assert _base.describe(f"loss.{term}.{arg}"), (term, arg)
            assert _base.describe(f"search.{term}.{arg}") or arg != "weight", (term, arg)


def test_every_config_has_the_shared_keys():
    """teacher_dir, teacher_only and the search are in every config's schema."""
    from experiments import _cli
    for name in _cli.config_names():
        keys = _base.flat_keys(_cli.load_config(name))
        for key in ("teacher_dir", "teacher_only", "search.sizes", "search.seeds",
                    "search.jacobian.weight", "loss.jacobian.weight"):
            assert key in keys, (name, key)
