"""Markers of the training tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes over 30 s (starts several Python processes); deselect "
        "with -m 'not slow'.")
