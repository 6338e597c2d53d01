"""experiments._data: the crops of a study pad with the normalised black, not 0; each
seed's cells choose on their own draw from the held-out validation split."""

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


def test_each_seed_draws_its_own_stratified_share_of_the_validation_split():
    validation = _data.load_data("digits").splits.validation
    counts = validation.class_counts()
    draws = {s: _data.seed_validation(validation, s, 0.5) for s in (0, 1, 100)}
    for seed, own in draws.items():
        np.testing.assert_array_equal(own.class_counts(),
                                      np.maximum(1, np.round(0.5 * counts)))
        assert set(own.source_index) <= set(validation.source_index)
        assert list(own.source_index) == sorted(own.source_index, key=list(
            validation.source_index).index)  # in the split's order
        again = _data.seed_validation(validation, seed, 0.5)
        np.testing.assert_array_equal(again.source_index, own.source_index)
    sets = [set(d.source_index) for d in draws.values()]
    assert len({frozenset(x) for x in sets}) == 3  # every seed its own
    assert _data.seed_validation(validation, 3, 1.0) is validation


def test_a_cell_selects_on_its_seeds_draw(smoke, tmp_path, monkeypatch):
    from experiments import _fit
    config = smoke("limited_data_digits", methods=("ce",), examples_per_class=(5,),
                   first_seed=7)
    seen, real = [], _fit.fit

    def recording(run_dir, **kw):
        seen.append(kw["validation"])
        if len(seen) == 2:
            raise Stop  # the teacher trained on its split; the first cell asks for its own
        return real(run_dir, **kw)
    monkeypatch.setattr(_fit, "fit", recording)
    with pytest.raises(Stop):
        limited_data.run(config, str(tmp_path / "w"))
    validation = _data.load_data(
        "digits", validation_fraction=config.validation_fraction).splits.validation
    assert seen[0] is not seen[1] and len(seen[1]) < len(seen[0]) == len(validation)
    np.testing.assert_array_equal(seen[1].source_index,
                                  _data.seed_validation(validation, 7, 0.5).source_index)
