"""experiments._grid: a choice on its grid's edge extends the grid outward, one step of the
grid's ratio at a time, until it is interior, ``search.extend`` values lie beyond the
grid, or the next value diverged; the driver trains the added candidates and records why
each edge stops."""

import json
import os
from pathlib import Path

import pytest

from experiments import _cli, _grid, _runs, _search, _study, limited_data
from experiments.configs._base import ConfigError
from jaxkd import training

M = "kd+jacobian+ce"


def _config(grid=(1.0, 3.0, 10.0), extend=2):
    config = _cli.load_config("limited_data_fashion")
    config.unlock()
    for term in config.loss:
        config.search[term].weight = ()
    config.methods, config.search.sizes, config.search.seeds = (M,), (10,), 1
    config.search.jacobian.weight, config.search.extend = grid, extend
    return config


def _choose(config, validation, extra):
    """The search over the candidates of ``validation`` ({weight: accuracy or None for
    diverged}), the grid's and ``extra``'s."""
    results = {}
    for w, v in validation.items():
        cell = _search.search_cell(M, {"jacobian.weight": w}, 10, 0)
        results[cell] = ({"diverged": "non-finite", "seconds": 0.0} if v is None else
                         {"best": {"validation": v, "test": 0.5}})
    return _search.choose(config, (M,), limited_data.method_terms, results,
                          {M: [{"jacobian.weight": w} for w in extra]})


def _step(config, validation, extra=()):
    search = _choose(config, validation, extra)
    more = _grid.extensions(config, search, (M,))
    return search, [w["jacobian.weight"] for w in more.get(M, [])], search["methods"][M]


def test_an_edge_choice_adds_values_of_the_grids_ratio_until_extend_is_spent():
    config = _config()
    rising = {1.0: 0.70, 3.0: 0.72, 10.0: 0.74}
    search, more, entry = _step(config, rising)
    assert entry["chosen"] == {"jacobian.weight": 10.0} and more == [33.0]  # 10 * 10 / 3
    assert entry["edges"] == [{"axis": "jacobian.weight", "value": 10.0, "side": "high",
                               "stop": "extended to 33"}]
    search, more, entry = _step(config, {**rising, 33.0: 0.76}, [33.0])
    assert more == [110.0]  # 33 * 33 / 10 = 108.9, at two significant digits
    search, more, entry = _step(config, {**rising, 33.0: 0.76, 110.0: 0.77}, [33.0, 110.0])
    assert entry["chosen"] == {"jacobian.weight": 110.0} and more == []
    assert entry["edges"][0]["stop"] == "search.extend = 2 steps beyond the grid taken"
    notes = _grid.edge_notes(search)
    assert notes == [f"{M}: jacobian.weight = 110 is chosen on the high edge of the values "
                     f"tried; the search stops there: search.extend = 2 steps beyond the "
                     f"grid taken."]
    assert f"- {notes[0]}" in "\n".join(_search.markdown(search, str))
    # With search.extend = 0 the grid is as given, and the table says so.
    search, more, entry = _step(_config(extend=0), rising)
    assert more == [] and "0 steps beyond the grid" in entry["edges"][0]["stop"]


def test_the_low_edge_and_an_interior_choice():
    config = _config()
    assert _step(config, {1.0: 0.74, 3.0: 0.72, 10.0: 0.70})[1] == [0.33]  # 1 * 1 / 3
    search, more, entry = _step(config, {1.0: 0.70, 3.0: 0.74, 10.0: 0.72})
    assert more == [] and entry["edges"] == [] and _grid.edge_notes(search) == []
    search, more, entry = _step(_config(grid=(3.0,)), {3.0: 0.7})
    assert more == [] and entry["edges"][0]["stop"].startswith("one value")


def test_a_diverged_value_is_never_chosen_and_bounds_the_edge():
    config = _config()
    search, more, entry = _step(config, {1.0: 0.70, 3.0: 0.72, 10.0: 0.74, 33.0: None},
                                [33.0])
    assert entry["chosen"] == {"jacobian.weight": 10.0} and more == []
    assert entry["edges"][0]["stop"] == "the next value, 33, diverged"
    assert [r.get("diverged", False) for r in entry["candidates"]] == [False] * 3 + [True]
    table = "\n".join(_search.markdown(search, str))
    assert f"| {M} | jacobian.weight33 | diverged | - | - | - |" in table
    assert all(r["candidate"] != "jacobian.weight33" for r in _search.rows(search))
    with pytest.raises(ConfigError, match=r"every candidate of the weight search of "
                                          r"'kd\+jacobian\+ce' diverged \(jacobian.weight1, "):
        _choose(config, {1.0: None, 3.0: None, 10.0: None}, [])


@pytest.mark.slow
def test_the_driver_trains_the_added_candidates_and_a_diverged_one_does_not_stop_it(
        smoke, tmp_path, monkeypatch):
    config = smoke("limited_data_digits", methods=(M,), examples_per_class=(5,),
                   **{"search.sizes": (5,), "search.jacobian.weight": (1.0, 10.0),
                      "search.extend": 1})
    real = _study.Trainer.fit

    def fit(self, run_dir, method, n, seed, weights):
        if weights.get("jacobian.weight") not in (None, 1.0, 10.0):  # beyond the grid
            raise training.NonFiniteLossError("simulated divergence")
        return real(self, run_dir, method, n, seed, weights)
    monkeypatch.setattr(_study.Trainer, "fit", fit)
    workdir = str(tmp_path / "w")
    limited_data.run(config, workdir)
    search = json.loads(Path(workdir, _search.SEARCH_FILE).read_text())
    entry = search["methods"][M]
    chosen = entry["chosen"]["jacobian.weight"]
    beyond = 100.0 if chosen == 10.0 else 0.1
    assert search["added"] == {M: [{"jacobian.weight": beyond}]}
    assert entry["edges"][0]["stop"] == f"the next value, {beyond:g}, diverged"
    run_dir = _runs.cell_dir(os.path.join(workdir, _search.SEARCH_DIR), _search.search_cell(
        M, {"jacobian.weight": beyond}, 5, 0))
    result = _runs.read_result(run_dir)
    assert result["diverged"] == "simulated divergence"
    assert result["run_config"]["search_weights"] == {"jacobian.weight": beyond}
    cell = _runs.read_result(_runs.cell_dir(workdir, _runs.Cell(M, 5, 0)))
    assert cell["run_config"]["search"]["extend"] == 1
    assert "diverged" in Path(workdir, "results.md").read_text()
    # Run again: every run is found finished (nothing trains), the same choice.
    monkeypatch.setattr(_study.Trainer, "fit", real)  # the diverged run is found finished
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained"))
    limited_data.run(config, workdir)
    again = json.loads(Path(workdir, _search.SEARCH_FILE).read_text())
    assert again["methods"][M]["chosen"] == entry["chosen"] and again["added"] == search["added"]


def test_a_method_trains_its_own_candidates_at_its_bases_choice_beyond_the_grid(
        smoke, tmp_path, monkeypatch):
    # KD + CE's validation rises with the KD weight, so its choice leaves the grid (1, 2
    # -> 4); KD + Jacobians + CE keeps that choice and trains its own candidate there.
    # (The first Fashion-MNIST evidence run stopped here: its candidates were looked up
    # in the base's grid only, and none was left.)
    config = smoke("limited_data_digits", methods=("kd+ce", M), examples_per_class=(5,),
                   **{"search.sizes": (5,), "search.kd.weight": (1.0, 2.0),
                      "search.jacobian.weight": (1.0,), "search.extend": 1})
    real = _study.Trainer.fit

    def fit(self, run_dir, method, n, seed, weights):
        result = real(self, run_dir, method, n, seed, weights)
        if method == "kd+ce" and weights:  # a search run: validation rises with the weight
            result["best"]["validation"] = weights["kd.weight"] / 10
        return result
    monkeypatch.setattr(_study.Trainer, "fit", fit)
    workdir = str(tmp_path / "w")
    limited_data.run(config, workdir)
    search = json.loads(Path(workdir, _search.SEARCH_FILE).read_text())
    assert search["added"] == {"kd+ce": [{"kd.weight": 4.0}]}
    assert search["methods"]["kd+ce"]["chosen"] == {"kd.weight": 4.0}
    entry = search["methods"][M]
    assert entry["chosen"] == {"kd.weight": 4.0, "jacobian.weight": 1.0}
    assert [r["weights"] for r in entry["candidates"] if r["eligible"]] == [entry["chosen"]]
    cell = _runs.read_result(_runs.cell_dir(workdir, _runs.Cell(M, 5, 0)))
    assert cell["loss_weights"] == entry["chosen"]
