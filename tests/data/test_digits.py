"""The embedded digits without scikit-learn: an error that names the extra to install."""

import builtins

import pytest

from jaxkd import data
from jaxkd.data import _digits


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    expected = r'scikit-learn is not installed: pip install "jaxkd\[experiments\]"'
    with pytest.raises(ImportError, match=expected) as info:
        _digits.load_digits_pool()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    with pytest.raises(ImportError, match=expected):
        data.load("digits")
