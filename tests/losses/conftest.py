import jax
import pytest


@pytest.fixture(autouse=True)
def strict_dtype_promotion():
    """The losses must never promote dtypes silently (a float64 leak, an int logit)."""
    with jax.numpy_dtype_promotion("strict"):
        yield
