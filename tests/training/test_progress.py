"""Progress output: plain lines, not tqdm's redraws, when stderr is not a terminal."""

import io

import numpy as np
import optax

from jaxkd import training
from jaxkd.training import _progress
from tests.training import _helpers as h


def test_lines_at_each_tenth_and_at_the_end():
    out = io.StringIO()
    bar = _progress.progress_bar(95, desc="teacher", file=out)
    assert isinstance(bar, _progress.LineProgress)  # a StringIO is no terminal
    for _ in range(95):
        bar.set_postfix(loss="1.5")
        bar.update(1)
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split(" steps")[0] for line in lines] == [
        *(f"teacher: {n}/95" for n in (10, 19, 29, 38, 48, 57, 67, 76, 86)),
        "teacher: 95/95"]
    assert lines[-1].endswith(", loss=1.5")


def test_a_line_every_interval_without_a_total():
    out = io.StringIO()
    bar = _progress.LineProgress(None, desc="x", unit="cell", file=out, every_s=0.0)
    bar.update(2)
    bar.update(1)
    bar.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "x: 2 cells", "x: 3 cells"]


def test_train_writes_a_few_lines_to_a_log(tmp_path, capsys):
    x, y = h.images(32, seed=2)
    training.train(h.student(), training.Objective(training.cross_entropy()),
                   optax.sgd(0.01), h.ArrayIterator(x, y), workdir=tmp_path, num_steps=20,
                   mesh=training.data_mesh(1), progress="student", tensorboard=False,
                   checkpoint_every=20)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("student: ")]
    # The bar starts after step 1 (no compilation in its rate): steps 2, 4, ..., 20.
    assert [line.split(" steps")[0] for line in lines] == [
        f"student: {n}/20" for n in range(2, 21, 2)]
    assert np.isfinite(float(lines[-1].rsplit("loss=", 1)[1]))
