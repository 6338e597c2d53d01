"""The docstring examples are run, so the documentation cannot drift from the code."""

import doctest

import pytest

from jaxkd.losses import _attention, _distillation, _jacobian, _noise, _projection


@pytest.mark.parametrize("module", [_attention, _distillation, _jacobian, _noise, _projection],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
