"""The Fashion-MNIST configs of studies 1-3 in smoke mode, on small IDX files written here.

The suite must not need Debian's ``dataset-fashion-mnist``: each test writes a tiny
Fashion-MNIST (10 classes, 12x12 grey images) under ``<tmp>/fashion_mnist/``, which
``jaxkd.data.load("fashion_mnist", data_dir=<tmp>)`` reads before the system copy.
"""

import gzip
import re
import json
import os
from pathlib import Path

import numpy as np
import pytest
from ml_collections import ConfigDict

from experiments import _budget, _search, _sweep, _workdir, limited_data, noise_robustness
from experiments import transfer
from experiments.configs import _base
from experiments.configs._base import ConfigError


def _idx(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_fashion(root: Path, *, train_per_class: int = 20, test_per_class: int = 4,
                  size: int = 12) -> str:
    """A learnable 10-class IDX set: each class a brighter square at its own place."""
    directory = root / "fashion_mnist"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 80, (len(labels), size, size), dtype=np.uint8)
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 4)
            images[i, 3 * r:3 * r + 3, 3 * c:3 * c + 3] = 250
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            (directory / f"{stem}-{kind}-ubyte.gz").write_bytes(gzip.compress(_idx(array)))
    return str(root)


def _result(run_dir: str) -> dict:
    return json.loads(Path(_workdir.result_path(run_dir)).read_text())


@pytest.mark.slow
def test_limited_data_fashion_search_budget_and_noise(smoke, tmp_path):
    data_dir = write_fashion(tmp_path / "data")
    workdir = str(tmp_path / "run")
    config = smoke("limited_data_fashion", data_dir=data_dir)
    summary = limited_data.run(config, workdir)

    # The budget grows with the data: 2 per class (20 images) stays at the floor (12),
    # all 160 training images would take 2 epochs = 32 steps, capped at 14.
    assert summary["budget"] == {"2": 12, "all": 14}
    for cell in limited_data.cells(config):
        result = _result(_sweep.cell_dir(workdir, cell))
        assert result["last"]["step"] == result["num_steps"] == summary["budget"][
            str(cell.examples_per_class)]

    # The search trained every candidate at size 2, seed 0, and chose by validation.
    search = json.loads(Path(workdir, _search.SEARCH_FILE).read_text())
    assert search == summary["weight_search"]
    assert set(search["methods"]) == {"kd+jacobian+ce", "kd+vjp+ce"}  # "ce": no search
    for method, candidates in (("kd+jacobian+ce", [{"jacobian_weight": 1.0},
                                                   {"jacobian_weight": 10.0}]),
                               ("kd+vjp+ce", [{"vjp_weight": 0.01}])):
        entry = search["methods"][method]
        assert [row["weights"] for row in entry["candidates"]] == candidates
        validation = []
        for weights in candidates:
            run_dir = _sweep.cell_dir(os.path.join(workdir, _search.SEARCH_DIR),
                                      _search.search_cell(method, weights, 2, 0))
            result = _result(run_dir)
            assert result["loss_weights"] == weights
            validation.append(100.0 * result["best"]["validation"])
        best = max(range(len(candidates)), key=lambda i: (validation[i], -i))
        assert entry["chosen"] == candidates[best]
        # The main cell of seed 0 at the searched size is the search's run, copied.
        main = _result(_sweep.cell_dir(workdir, _sweep.Cell(method, 2, 0)))
        assert main["loss_weights"] == entry["chosen"] and "reused_from" in main
        # The other size trained with the chosen weights too.
        assert _result(_sweep.cell_dir(workdir, _sweep.Cell(method, "all", 0)))[
            "loss_weights"] == entry["chosen"]
    markdown = Path(workdir, "results.md").read_text()
    assert "Loss weights chosen on validation" in markdown
    assert "Training steps per cell, by examples per class: 2: 12, all: 14." in markdown

    # The study's time counts a reused run once.
    cells = {c: _result(_sweep.cell_dir(workdir, c)) for c in limited_data.cells(config)}
    teacher = _result(os.path.join(workdir, "teacher"))
    fresh = sum(r["seconds"] for r in cells.values() if "reused_from" not in r)
    assert summary["total_seconds"] == pytest.approx(teacher["seconds"] + search["seconds"]
                                                     + fresh)

    # The search's runs record their config; the same command again reuses every run
    # (a copied search run carries its cell's config, so nothing is "changed").
    search_dir = os.path.join(workdir, _search.SEARCH_DIR)
    first = _sweep.cell_dir(search_dir, _search.search_cell(
        "kd+jacobian+ce", {"jacobian_weight": 1.0}, 2, 0))
    assert _result(first)[_workdir.RUN_CONFIG]["search_weights"] == {"jacobian_weight": 1.0}
    assert limited_data.run(config, workdir)["rows"] == summary["rows"]
    # A changed training key: the search's runs are refused too, or deleted to retrain.
    changed = ConfigDict(config.to_dict())
    changed.train.learning_rate = 0.5
    runs = {first: {**_sweep.cell_config(changed, _sweep.Cell("kd+jacobian+ce", 2, 0)),
                    "search_weights": {"jacobian_weight": 1.0}}}
    with pytest.raises(_workdir.ConfigChanged, match="train.learning_rate"):
        _search.check_runs(changed, search_dir, runs)
    assert os.path.exists(first)
    changed.on_change = "retrain"
    _search.check_runs(changed, search_dir, runs)
    assert not os.path.exists(first)

    # Study 2 on the same work directory trains nothing new.
    before = os.path.getmtime(Path(workdir, _search.SEARCH_FILE).parent / "teacher"
                              / "result.json")
    noise = noise_robustness.run(config, workdir)
    assert {r["examples_per_class"] for r in noise["rows"]} == {2}
    assert {r["sigma"] for r in noise["rows"]} == {0.0, 0.5}
    assert os.path.getmtime(Path(workdir, "teacher", "result.json")) == before

    # A second work directory reuses the teacher (teacher_dir) instead of training one.
    other = str(tmp_path / "other")
    config.teacher_dir = os.path.join(workdir, "teacher")
    config.teacher_only = True
    only = limited_data.run(config, other)
    assert only["teacher"]["last"] == teacher["last"]
    assert not os.path.exists(os.path.join(other, "teacher"))
    # The students' budget and weight search are no part of the teacher: changing them
    # keeps the teacher (of a teacher_dir, and of the work directory itself).
    config.train_max_steps += 1
    config.jacobian_weights = (3.0,)
    assert limited_data.run(config, other)["teacher"]["last"] == teacher["last"]
    config.teacher_dir = ""
    assert _sweep.teacher_config(config) == _workdir.recorded(os.path.join(workdir, "teacher"))


@pytest.mark.slow
def test_transfer_fashion_smoke(smoke, tmp_path):
    data_dir = write_fashion(tmp_path / "data")
    config = smoke("transfer_fashion", data_dir=data_dir)
    workdir = str(tmp_path / "run")
    summary = transfer.run(config, workdir)
    assert {r["method"] for r in summary["rows"]} == set(config.methods)
    assert all(0 <= r["mean"] <= 100 for r in summary["rows"])
    # The added terms' weights come from the search (one candidate each here: its runs
    # are the cells of size 2, seed 0, copied; the time counts them once).
    search = summary["weight_search"]
    assert {m: e["chosen"] for m, e in search["methods"].items()} == {
        "lwf+jacobian": {"jacobian_weight": 10.0},
        "lwf+attention+attention_jacobian": {"attention_jacobian_weight": 1.0,
                                             "attention_weight": 10.0}}
    for method, entry in search["methods"].items():
        main = _result(_sweep.cell_dir(workdir, _sweep.Cell(method, 2, 0)))
        assert main["loss_weights"] == entry["chosen"] and "reused_from" in main
    assert "Loss weights chosen on validation" in Path(workdir, "results.md").read_text()
    # 2 per class x 5 target classes = 10 images: the floor of 12 steps, both kinds.
    assert summary["budget"] == {"students n=2": 12, "finetune n=2": 12}
    assert summary["target"].endswith("[5, 6, 7, 8, 9]")


def test_budget_grows_with_the_data_between_floor_and_cap():
    train = ConfigDict(dict(num_steps=200, batch_size=64, num_evals=4))
    assert _budget.num_steps(train, 100, epochs=0.0) == 200  # off: the fixed budget
    assert _budget.num_steps(train, 100, epochs=30.0) == 200  # 47 < the floor
    assert _budget.num_steps(train, 500, epochs=30.0) == 235  # ceil(30 * 500 / 64)
    assert _budget.num_steps(train, 5000, epochs=30.0, max_steps=500) == 500
    assert _budget.num_steps(train, 5000, epochs=30.0) == 2344
    cfg = _budget.for_size(ConfigDict(dict(num_steps=2, batch_size=4, num_evals=4)), 4,
                           epochs=1.0)
    assert cfg.num_steps == 2 and cfg.num_evals == 2


def test_choice_reads_validation_never_test():
    config = _cli_config()
    config.methods = ("kd+jacobian+ce",)
    config.weight_search_sizes = (10, 50)
    config.weight_search_seeds = 1
    config.jacobian_weights = (1.0, 10.0, 30.0)
    # Weight 30 is best on test, 10 on validation (mean over sizes), 1 ties 10 at n=10.
    accuracy = {1.0: ((0.70, 0.99), (0.70, 0.99)), 10.0: ((0.70, 0.50), (0.75, 0.50)),
                30.0: ((0.60, 1.00), (0.60, 1.00))}
    results = {}
    for w, per_size in accuracy.items():
        for n, (val, test) in zip((10, 50), per_size):
            cell = _search.search_cell("kd+jacobian+ce", {"jacobian_weight": w}, n, 0)
            results[cell] = {"best": {"validation": val, "test": test}}
    search = _search.choose(config, config.methods, limited_data.method_terms, results)
    entry = search["methods"]["kd+jacobian+ce"]
    assert entry["chosen"] == {"jacobian_weight": 10.0}
    assert [round(r["mean"], 6) for r in entry["candidates"]] == [70.0, 72.5, 60.0]
    # A tie goes to the candidate listed first.
    results[_search.search_cell("kd+jacobian+ce", {"jacobian_weight": 1.0}, 50, 0)] = {
        "best": {"validation": 0.75, "test": 0.0}}
    assert _search.choose(config, config.methods, limited_data.method_terms, results)[
        "methods"]["kd+jacobian+ce"]["chosen"] == {"jacobian_weight": 1.0}


def _cli_config():
    from experiments import _cli
    config = _cli.load_config("limited_data_fashion")
    config.unlock()
    return config


@pytest.mark.parametrize("key, value, expected", [
    ("train_epochs", -1.0, "non-negative number of epochs"),
    ("train_max_steps", 100, "0 or at least train.num_steps (300)"),
    ("weight_search_sizes", (0,), "positive integers and/or 'all'"),
    ("jacobian_weights", (), "one or more positive weights"),
    ("projection_weights", (0.1, -1.0), "one or more positive weights"),
])
def test_budget_and_search_keys_are_validated(key, value, expected):
    config = _cli_config()
    with config.ignore_type():
        config[key] = value
    with pytest.raises(ConfigError, match=f"config key {key!r}.*{re.escape(expected)}"):
        _base.validate(config)


def test_fashion_configs_say_what_every_key_means():
    from experiments import _cli
    for name in ("limited_data_fashion", "transfer_fashion"):
        for mode in ("", ":smoke"):
            config = _cli.load_config(name + mode)
            _base.validate(config)
            missing = [k for k in _base.flat_keys(config) if _base.describe(k) is None]
            assert not missing, (name, mode, missing)


def test_a_batch_larger_than_the_smallest_subset_is_refused_up_front():
    config = ConfigDict(dict(examples_per_class=(10, 50, "all"),
                             train=dict(batch_size=64), finetune_train=dict(batch_size=48)))
    _budget.check_batches(config, 10, ("train", "finetune_train"))  # 100 images: fits
    with pytest.raises(ConfigError, match=r"train.batch_size=64 exceeds the 50 training "
                                          r"examples of examples_per_class=10 \(5 classes\)"):
        _budget.check_batches(config, 5, ("train", "finetune_train"))
    config.train.batch_size = 48
    _budget.check_batches(config, 5, ("train", "finetune_train"))  # 48 <= 50
    config.examples_per_class = ("all",)
    config.train.batch_size = 10_000
    _budget.check_batches(config, 5)  # no subset size: the loader's own check applies
