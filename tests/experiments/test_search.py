"""experiments._search: the candidates of ``config.search``, the choice by validation
accuracy (never test), the loss with the chosen values."""

from experiments import _cli, _search, limited_data, transfer


def _cli_config():
    config = _cli.load_config("limited_data_fashion")
    config.unlock()
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
