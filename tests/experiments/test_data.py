"""experiments._data: the crops of a study pad with the normalised black, not 0."""

import numpy as np
import pytest

from experiments import _data, limited_data
from jaxkd import data


def test_background_is_the_normalised_black():
    prepared = _data.load_data("digits")
    black = data.normalize(np.zeros((1, 1, 1, 1), np.float32), prepared.mean, prepared.std)
    np.testing.assert_allclose(prepared.background, np.asarray(black).reshape(-1), rtol=1e-6)
    assert float(prepared.background[0]) < -0.5  # far from the 0 (mean grey) of before
    # Crops of the normalised images pad with it: the border is the black of the data.
    train = prepared.splits.train
    batches = _data.train_batches(train, batch_size=64, seed=0, augment=True,
                                  crop_padding=3, pad_value=prepared.background)
    images = next(batches)["image"]
    border = np.isclose(images, prepared.background[0])
    assert border[:, 0, :].any() or border[:, -1, :].any()


class Stop(Exception):
    pass


def test_the_study_pads_teacher_and_cells_with_the_background(smoke, tmp_path,
                                                              monkeypatch):
    config = smoke("limited_data_digits", augment=True, methods=("logits+ce",),
                   examples_per_class=(5,))
    seen = []
    real = _data.train_batches

    def recording(dataset, **kw):
        seen.append(kw.get("pad_value", 0.0))
        if len(seen) == 2:
            raise Stop  # the teacher and the first cell have asked for their batches
        return real(dataset, **kw)

    monkeypatch.setattr(_data, "train_batches", recording)
    with pytest.raises(Stop):
        limited_data.run(config, str(tmp_path / "w"))
    background = _data.load_data("digits").background
    assert len(seen) == 2
    for pad_value in seen:
        np.testing.assert_allclose(pad_value, background)
