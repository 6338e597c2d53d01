"""experiments._search: the candidates of ``config.search``, the choice by validation
accuracy (never test), the loss with the chosen values."""

import pytest

from experiments import _cli, _search, limited_data, transfer


def _cli_config():
    """The Fashion config with nothing searched (each test sets its candidates)."""
    config = _cli.load_config("limited_data_fashion")
    config.unlock()
    for term in config.loss:
        config.search[term].weight = ()
    return config


def test_choice_reads_validation_never_test():
    config = _cli_config()
    config.methods = ("kd+jacobian+ce",)
    config.search.sizes = (10, 50)
    config.search.seeds = 1
    config.search.jacobian.weight = (1.0, 10.0, 30.0)
    # Weight 30 is best on test, 10 on validation (mean over sizes), 1 ties 10 at n=10.
    accuracy = {1.0: ((0.70, 0.99), (0.70, 0.99)), 10.0: ((0.70, 0.50), (0.75, 0.50)),
                30.0: ((0.60, 1.00), (0.60, 1.00))}
    results = {}
    for w, per_size in accuracy.items():
        for n, (val, test) in zip((10, 50), per_size):
            cell = _search.search_cell("kd+jacobian+ce", {"jacobian.weight": w}, n, 0)
            results[cell] = {"best": {"validation": val, "test": test}}
    search = _search.choose(config, config.methods, limited_data.method_terms, results)
    entry = search["methods"]["kd+jacobian+ce"]
    assert entry["chosen"] == {"jacobian.weight": 10.0}
    assert [round(r["mean"], 6) for r in entry["candidates"]] == [70.0, 72.5, 60.0]
    # A tie goes to the candidate listed first.
    results[_search.search_cell("kd+jacobian+ce", {"jacobian.weight": 1.0}, 50, 0)] = {
        "best": {"validation": 0.75, "test": 0.0}}
    assert _search.choose(config, config.methods, limited_data.method_terms, results)[
        "methods"]["kd+jacobian+ce"]["chosen"] == {"jacobian.weight": 1.0}


def test_candidates_are_the_product_of_the_searched_arguments_of_a_methods_terms():
    config = _cli_config()
    config.search.sizes = (10,)
    config.search.attention.weight = (1.0, 10.0)
    config.search.attention_jacobian.weight = (0.1,)
    terms = transfer.method_terms("lwf+attention+attention_jacobian")
    assert _search.candidates(config, terms) == [
        {"attention.weight": 1.0, "attention_jacobian.weight": 0.1},
        {"attention.weight": 10.0, "attention_jacobian.weight": 0.1}]
    assert _search.candidates(config, ["ce", "kd"]) == []  # nothing searched
    config.search.sizes = ()
    assert _search.candidates(config, terms) == []  # the search is off
    assert _search.candidate_name({"jacobian.weight": 10.0, "vjp.weight": 0.01}) == \
        "jacobian.weight10-vjp.weight0.01"


def test_loss_with_sets_the_chosen_arguments_only():
    config = _cli_config()
    loss = _search.loss_with(config.loss, {"jacobian.weight": 3.0})
    assert loss.jacobian.weight == 3.0 and config.loss.jacobian.weight == 1.0
    assert loss.jacobian.outputs == config.loss.jacobian.outputs
    assert str(limited_data.build_objective("kd+jacobian+ce", loss)) == \
        "Objective(kd*1, jacobian*3, ce*1)"


def _fill(results, method, weights, per_seed_val, per_seed_test=None, n=10):
    for s, v in enumerate(per_seed_val):
        t = per_seed_test[s] if per_seed_test else 0.5
        results[_search.search_cell(method, weights, n, s)] = {
            "best": {"validation": v, "test": t}}


def test_a_method_that_adds_a_term_keeps_its_bases_choice_and_tuning_is_equal():
    config = _cli_config()
    config.methods = ("kd+ce", "kd+jacobian+ce")
    config.search.sizes = (10,)
    config.search.seeds = 3
    config.search.kd.weight = (0.5, 1.0, 2.0)
    config.search.jacobian.weight = (1.0, 3.0, 10.0)
    terms = limited_data.method_terms
    assert _search.base_method("kd+jacobian+ce", config.methods, terms, config) == "kd+ce"
    assert _search.base_method("kd+ce", config.methods, terms, config) is None
    assert len(_search.candidates(config, terms("kd+jacobian+ce"))) == 9
    results = {}
    # kd+ce: KD weight 2 is best on validation (1 is best on test: never read).
    for kd, val, test in ((0.5, 0.60, 0.60), (1.0, 0.62, 0.90), (2.0, 0.70, 0.61)):
        _fill(results, "kd+ce", {"kd.weight": kd}, [val - 0.01, val, val + 0.01],
              [test] * 3)
    # kd+jacobian+ce: its overall best (KD 0.5, Jacobian 10) is not eligible: KD 2 is kept.
    for kd in (0.5, 1.0, 2.0):
        for jac in (1.0, 3.0, 10.0):
            val = 0.99 if (kd, jac) == (0.5, 10.0) else 0.70 + 0.01 * jac * (kd == 2.0)
            _fill(results, "kd+jacobian+ce", {"kd.weight": kd, "jacobian.weight": jac},
                  [val, val, val])
    search = _search.choose(config, config.methods, terms, results)
    entry = search["methods"]["kd+jacobian+ce"]
    assert entry["chosen"] == {"kd.weight": 2.0, "jacobian.weight": 10.0}
    assert entry["base"] == "kd+ce" and entry["fixed"] == {"kd.weight": 2.0}
    assert sum(r["eligible"] for r in entry["candidates"]) == 3  # as many as kd+ce's
    kd = search["methods"]["kd+ce"]
    assert kd["chosen"] == {"kd.weight": 2.0} and kd["tie"] is None
    best = next(r for r in kd["candidates"] if r["weights"] == {"kd.weight": 2.0})
    assert best["mean"] == pytest.approx(70.0) and best["std"] == pytest.approx(1.0)
    assert best["test_mean"] == pytest.approx(61.0) and best["test_std"] == 0.0
    text = "\n".join(_search.markdown(search, str))
    assert "| kd+ce | **kd.weight2** | 70.00 | **70.00 ± 1.00** | 61.00 ± 0.00 |" in text
    assert "(jacobian.weight10-kd.weight0.5)" in text
    assert "kd+jacobian+ce: with kd+ce's kd.weight2." in text
    assert list(search["methods"]) == ["kd+ce", "kd+jacobian+ce"]
    csv_rows = _search.rows(search)
    assert len(csv_rows) == 2 * (3 + 9)
    assert {r["split"] for r in csv_rows} == {"validation", "test"}


def test_best_candidates_within_their_spread_are_reported_as_a_tie():
    config = _cli_config()
    config.methods = ("logits+ce",)
    config.search.sizes = (10,)
    config.search.seeds = 3
    config.search.logits.weight = (0.03, 0.1, 0.3)
    results = {}
    _fill(results, "logits+ce", {"logits.weight": 0.03}, [0.60, 0.70, 0.80])  # 70 ± 10
    _fill(results, "logits+ce", {"logits.weight": 0.1}, [0.64, 0.65, 0.66])  # 65 ± 1
    _fill(results, "logits+ce", {"logits.weight": 0.3}, [0.40, 0.41, 0.42])  # 41 ± 1
    entry = _search.choose(config, config.methods, limited_data.method_terms,
                           results)["methods"]["logits+ce"]
    assert entry["chosen"] == {"logits.weight": 0.03}
    assert entry["tie"] == ["logits.weight0.03", "logits.weight0.1"]
    text = "\n".join(_search.markdown({"sizes": [10], "seeds": [0, 1, 2],
                                       "methods": {"logits+ce": entry}}, str))
    assert "tie within their spread" in text and "logits.weight0.3" not in text.split(
        "tie within")[1]
    # Far apart: no tie.
    _fill(results, "logits+ce", {"logits.weight": 0.03}, [0.79, 0.80, 0.81])
    assert _search.choose(config, config.methods, limited_data.method_terms, results)[
        "methods"]["logits+ce"]["tie"] is None


def test_base_methods_of_the_fashion_configs():
    config = _cli.load_config("limited_data_fashion")
    base = {m: _search.base_method(m, config.methods, limited_data.method_terms, config)
            for m in config.methods}
    # logits+ce searches what logits searches: nothing of its own would be left.
    assert base == {"ce": None, "logits+ce": None, "logits+jacobian+ce": "logits+ce",
                    "logits": None, "logits+jacobian": "logits", "kd+ce": None,
                    "kd+jacobian+ce": "kd+ce", "kd+vjp+ce": "kd+ce", "kd+jvp+ce": "kd+ce",
                    "kd+fd+ce": "kd+ce"}
    assert config.search.seeds >= 3
    lengths = {len(v) for t in config.search.keys() if t not in ("sizes", "seeds", "extend")
               for v in [config.search[t].weight] if v}
    assert lengths == {3}  # every searched weight has as many candidates
    config = _cli.load_config("transfer_fashion")
    assert config.search.lwf.weight and config.search.seeds >= 3
    assert _search.base_method("lwf+attention+attention_jacobian", config.methods,
                               transfer.method_terms, config) == "lwf+attention"
    assert _search.base_method("lwf+jacobian", config.methods, transfer.method_terms,
                               config) == "lwf"


def test_an_integer_argument_keeps_integer_candidates():
    """``search.jacobian.k = (1, 2)`` tries k=1 and k=2 (an int field), a weight's ``3``
    is the float 3.0."""
    config = _cli_config()
    config.search.sizes = (10,)
    config.search.jacobian.k = (1, 2)
    config.search.jacobian.weight = (3,)
    got = _search.candidates(config, ["jacobian"])
    assert got == [{"jacobian.k": 1, "jacobian.weight": 3.0},
                   {"jacobian.k": 2, "jacobian.weight": 3.0}]
    assert all(type(c["jacobian.k"]) is int and type(c["jacobian.weight"]) is float
               for c in got)
    assert _search.loss_with(config.loss, got[1]).jacobian.k == 2


def test_a_cells_search_identity_names_the_base_whose_choice_it_keeps(smoke):
    """The base depends on the methods run together, so it is part of the run config: a
    cell searched alone (its own KD weight) is not reused for one that keeps kd+ce's."""
    from experiments import _runs, _study
    config = smoke("limited_data_digits")
    config.unlock()
    config.search.sizes = (5,)
    config.search.kd.weight = (1.0, 3.0)
    config.search.jacobian.weight = (1.0, 3.0)
    cell = _runs.Cell("kd+jacobian+ce", 5, 0)
    config.methods = ("kd+ce", "kd+jacobian+ce")
    together = _study.cell_config(limited_data.STUDY, config, cell, None)
    config.methods = ("kd+jacobian+ce",)
    alone = _study.cell_config(limited_data.STUDY, config, cell, None)
    assert together["search"]["base"] == "kd+ce" and alone["search"]["base"] is None


def test_the_search_runs_bases_first_and_trains_added_terms_at_the_bases_choice_only():
    config = _cli.load_config("limited_data_fashion")  # its own candidates, 3 each
    terms = limited_data.method_terms
    methods = list(config.methods)
    rounds = _search.levels(config, methods, terms)
    assert rounds == [["logits+ce", "logits", "kd+ce"],
                      ["logits+jacobian+ce", "logits+jacobian", "kd+jacobian+ce",
                       "kd+vjp+ce", "kd+jvp+ce", "kd+fd+ce"]]  # CE searches nothing
    with pytest.raises(ValueError, match="needs 'kd\\+ce'"):
        _search.to_train(config, "kd+jacobian+ce", methods, terms, {"methods": {}})
    search = {"methods": {"kd+ce": {"chosen": {"kd.weight": 3.0}},
                          "logits": {"chosen": {"logits.weight": 0.03}}}}
    runs = _search.to_train(config, "kd+jacobian+ce", methods, terms, search)
    assert runs == [{"kd.weight": 3.0, "jacobian.weight": w} for w in (1.0, 3.0, 10.0)]
    assert [r["logits.weight"] for r in _search.to_train(
        config, "logits+jacobian", methods, terms, search)] == [0.03] * 3
    assert len(_search.to_train(config, "kd+ce", methods, terms, search)) == 3
    # A base's choice beyond its grid (a value the edge search added, kd 27 after 3 and
    # 9): the method still trains its own three candidates, at that value.
    beyond = {"methods": {"kd+ce": {"chosen": {"kd.weight": 27.0}}},
              "added": {"kd+ce": [{"kd.weight": 9.0}, {"kd.weight": 27.0}]}}
    assert _search.to_train(config, "kd+jacobian+ce", methods, terms, beyond) == [
        {"kd.weight": 27.0, "jacobian.weight": w} for w in (1.0, 3.0, 10.0)]
    # Every method chooses among 3: 9 searched methods x 3 candidates = 27 runs per seed,
    # not the 63 of every method's full product.
    assert sum(len(_search.candidates(config, terms(m))) for m in methods) == 63
    # The driver's plan of a round: 3 runs per method and seed, at the base's choice.
    from experiments import _study
    plan = _study.search_plan(limited_data.STUDY, config, ["kd+jacobian+ce"], search)
    assert len(plan) == 3 * config.search.seeds
    assert {w["kd.weight"] for _, w in plan.values()} == {3.0}
    assert len(_study.search_plan(limited_data.STUDY, config, ["kd+jacobian+ce"])) == \
        9 * config.search.seeds  # without choices: every run a work directory may hold


def test_every_candidate_shows_its_paired_test_gain_and_tied_ones_say_it():
    config = _cli_config()
    config.methods = ("ce", "kd+ce", "kd+jacobian+ce")
    config.search.sizes = (10,)
    config.search.seeds = 3
    config.search.kd.weight = (1.0,)
    config.search.jacobian.weight = (1.0, 3.0)
    terms = limited_data.method_terms

    def put(results, cell, val, test):
        results[cell] = {"best": {"validation": val, "test": 0.0},
                         "last": {"validation": val, "test": test}}

    results = {}
    for s, t in enumerate((0.60, 0.62, 0.64)):
        put(results, _search.search_cell("kd+ce", {"kd.weight": 1.0}, 10, s), 0.5, t)
        # Jacobian 1 and 3 tie on validation (70 ± 10 vs 69 ± 1); their test gains differ.
        put(results, _search.search_cell("kd+jacobian+ce", {"kd.weight": 1.0,
                                                            "jacobian.weight": 1.0}, 10, s),
            (0.60, 0.70, 0.80)[s], t + 0.01 * (s + 1))
        put(results, _search.search_cell("kd+jacobian+ce", {"kd.weight": 1.0,
                                                            "jacobian.weight": 3.0}, 10, s),
            (0.68, 0.69, 0.70)[s], t - 0.02)
    from experiments import _runs
    search = _search.choose(config, config.methods, terms, results)
    pairs = (("kd+ce", "kd+jacobian+ce"), ("ce", "kd+ce"))
    _search.add_gains(search, pairs, results)  # ce's cells are missing: that pair is skipped
    rows = search["methods"]["kd+jacobian+ce"]["candidates"]
    assert [r["gains"]["kd+ce"]["values"] for r in rows] == [
        pytest.approx([1.0, 2.0, 3.0]), pytest.approx([-2.0, -2.0, -2.0])]
    assert rows[0]["gains"]["kd+ce"]["std"] == pytest.approx(1.0)
    assert "gains" not in search["methods"]["kd+ce"]["candidates"][0]
    text = "\n".join(_search.markdown(search, str))
    assert "| +2.00 ± 1.00 vs kd+ce |" in text and "| -2.00 ± 0.00 vs kd+ce |" in text
    assert ("the paired test gain at each: jacobian.weight1-kd.weight1: +2.00 ± 1.00 vs "
            "kd+ce; jacobian.weight3-kd.weight1: -2.00 ± 0.00 vs kd+ce.") in text
    # An unsearched method is read from the study's cells at the search's sizes and seeds.
    for s in range(3):
        put(results, _runs.Cell("ce", 10, s), 0.4, 0.55)
    _search.add_gains(search, pairs, results)
    assert search["methods"]["kd+ce"]["candidates"][0]["gains"]["ce"]["mean"] == \
        pytest.approx(7.0)


def test_study_2_students_each_choose_among_three_at_kd_ces_choice():
    config = _cli.load_config("noise_robustness_fashion")
    terms = limited_data.method_terms
    methods = list(config.methods)
    for method in methods:  # every row builds, with Proposition 1's unnormalised terms
        objective = limited_data.build_objective(method, config.loss)
        assert len(objective.terms) == len(terms(method))
    assert config.loss.jacobian_raw.normalize is False
    assert config.loss.jacobian_all.outputs == "all" and not config.loss.jacobian_all.normalize
    assert config.loss.noisy.kind == "squared" and config.loss.noisy_kl.kind == "kl"
    rounds = _search.levels(config, methods, terms)
    assert rounds == [["kd+ce"], methods[2:]]  # CE searches nothing
    search = {"methods": {"kd+ce": {"chosen": {"kd.weight": 1.0}}}}
    for method in methods[2:]:
        assert _search.base_method(method, methods, terms, config) == "kd+ce"
        assert len(_search.to_train(config, method, methods, terms, search)) == 3
    assert [w["noisy.sigma"] for w in _search.to_train(
        config, "kd+noisy+ce", methods, terms, search)] == [0.15, 0.3, 0.6]
