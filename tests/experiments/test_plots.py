"""experiments._plots: a figure killed mid-write leaves the previous one; a method's
colour is its place among the study's methods."""

import os
from pathlib import Path

import pytest

from experiments import _plots


class Killed(Exception):
    pass


def test_a_plot_killed_mid_write_leaves_the_previous_one(tmp_path, monkeypatch):
    plt = _plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = _plots.save(fig, str(tmp_path), "accuracy.png")
    before = Path(path).read_bytes()
    assert before.startswith(b"\x89PNG")

    from matplotlib.figure import Figure
    real_savefig = Figure.savefig

    def dies_halfway(self, target, **kwargs):
        real_savefig(self, target, **kwargs)
        if hasattr(target, "truncate"):
            target.truncate(100)
        else:
            with open(target, "r+b") as f:
                f.truncate(100)
        raise Killed

    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with pytest.raises(Killed):
        _plots.save(fig, str(tmp_path), "accuracy.png")
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["accuracy.png"]  # no temporary file left behind
