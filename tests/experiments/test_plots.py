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


def test_a_methods_colour_is_its_place_among_the_studys_methods():
    import matplotlib
    tab20 = matplotlib.colormaps["tab20"].colors
    methods = ["ce", "kd+ce", "kd+jacobian+ce"]
    assert [_plots.color(m, methods) for m in methods] == [tab20[0], tab20[2], tab20[4]]
    assert len({_plots.color(m, methods) for m in methods}) == len(methods)
    assert _plots.color("teacher", methods) == "black"
    # Another study's methods take the same places: no list of method names to extend.
    assert _plots.color("lwf", ["no_transfer", "lwf"]) == tab20[2]
    assert _plots.color("unlisted", methods) in matplotlib.colormaps["tab20b"].colors
