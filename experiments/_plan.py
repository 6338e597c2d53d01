"""A study's plan: what it declares (:class:`Study`), the runs it would train or reuse
and what determines each one's result (its *run config*), the checks before anything
loads.

**Run identity.** The teacher's run config is the config keys the study lists in
``teacher_keys`` (an allow-list); a cell's, the keys of ``cell_keys(method)``, its
method's ``loss.<term>`` sub-configs, the part of the search that chooses its weights,
its method, size and seed, and the teacher's own run config when the cell depends on
the teacher (its objective reads the teacher, or its student starts from it). It is
recorded in ``config.json`` and ``result.json`` (``_runs``); the driver (``_study``)
runs the plan.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flax import nnx
from ml_collections import ConfigDict

from experiments import _budget, _data, _runs, _search
from experiments.configs import _checks
from experiments.configs._base import ConfigError
from jaxkd import training

DATA_KEYS, StudyData = _data.DATA_KEYS, _data.StudyData
# The keys of the teacher's own training: a reused teacher_dir may differ in them.
TEACHER_TRAINING = ("teacher_train", "teacher_seed")
# How random crops pad: with the data's black, normalised (``PreparedData.background``).
# Recorded in the run config of every run that augments, so that runs trained with the
# earlier padding (the normalised zero, a grey frame) are refused as changed, not mixed in.
AUGMENT_PADDING = "background"


def _nothing(config: ConfigDict) -> None:
    del config


@dataclasses.dataclass(frozen=True)
class Study:
    """What a sweep study contributes; the driver calls nothing else of it.

    Attributes:
      name: its section of ``results.json`` (and the progress bar).
      terms: method -> its loss-term names, keys of ``config.loss`` (raises
        ``ConfigError`` for a method outside the study's table).
      objective: ``(method, loss config) -> jaxkd.training.Objective``.
      label: method -> its readable name.
      prepare: config -> :class:`StudyData`.
      make_student: ``(config, data, method, seed, teacher)`` -> the network a cell
        trains (``teacher`` is None when only a template is needed).
      teacher_keys: the config keys that change the teacher (its run config).
      cell_keys: method -> the config keys that change its cells (with the loss terms,
        the search, the teacher, the method, size and seed, which the driver adds).
      summary: config -> the section's own entries (its data, its networks).
      paper: ``(config, method, examples_per_class)`` -> the paper's number or None.
      pairs: ``(without, with)`` methods whose per-seed difference is reported.
      markdown, plots, console: the report of a section (``_report.finish``).
      check: the study's own up-front checks of a config.
      train_key: method -> the config key of its training (``train`` by default).
      starts_from_teacher: method -> whether its student is initialised from the
        teacher (its cells then depend on the teacher whatever their objective).
      budget_label: ``(train_key, examples_per_class)`` -> the budget's name in
        results.md.
      extra: ``(session, outcome)`` -> more entries of the section (e.g. a probe of the
        teacher), or None.
      select: config -> the cells this study trains or reuses (every cell by default).
      evaluate: ``(session, outcome)`` -> ``(section, seconds)``: what the driver runs
        after the cells, in place of the accuracy summary (study 2's measures under
        noise, and the seconds they took), or None.
    """
    name: str
    terms: Callable[[str], Sequence[str]]
    objective: Callable[[str, ConfigDict], training.Objective]
    label: Callable[[str], str]
    prepare: Callable[[ConfigDict], StudyData]
    make_student: Callable[..., nnx.Module]
    teacher_keys: Sequence[str]
    cell_keys: Callable[[str], Sequence[str]]
    summary: Callable[[ConfigDict], dict[str, Any]]
    paper: Callable[[ConfigDict, str, Any], float | None]
    pairs: Sequence[tuple[str, str]]
    markdown: Callable[[dict[str, Any]], str]
    plots: Callable[[str, dict[str, Any]], list[str]]
    console: Callable[[dict[str, Any]], str]
    check: Callable[[ConfigDict], None] = _nothing
    train_key: Callable[[str], str] = lambda method: "train"
    starts_from_teacher: Callable[[str], bool] = lambda method: False
    budget_label: Callable[[str, Any], str] = lambda key, n: str(n)
    extra: Callable[[Any, Any], dict[str, Any]] | None = None
    select: Callable[[ConfigDict], list[_runs.Cell]] = _runs.cells
    evaluate: Callable[[Any, Any], tuple[dict[str, Any], float]] | None = None


# ----------------------------------------------------------------------------------------
# Run identity.


def _pick(config: ConfigDict, keys: Sequence[str]) -> dict[str, Any]:
    return {k: config[k].to_dict() if isinstance(config[k], ConfigDict) else config[k]
            for k in keys if k in config}


def teacher_dir(config: ConfigDict, workdir: str) -> str:
    """The teacher's run directory: ``config.teacher_dir`` or ``<workdir>/teacher``."""
    return config.teacher_dir or os.path.join(workdir, "teacher")


def _padding(config: ConfigDict) -> dict[str, Any]:
    return {"augment_padding": AUGMENT_PADDING} if config.get("augment") else {}


def teacher_config(study: Study, config: ConfigDict) -> dict[str, Any]:
    """The teacher's run config: the config keys ``study.teacher_keys`` (and how its
    crops pad, when it augments)."""
    return _runs.canonical({**_pick(config, study.teacher_keys), **_padding(config)})


def depends_on_teacher(study: Study, config: ConfigDict, method: str) -> bool:
    """Whether ``method``'s cells read the teacher (objective) or start from it."""
    return (study.objective(method, config.loss).needs_teacher
            or study.starts_from_teacher(method))


def cell_config(study: Study, config: ConfigDict, cell: _runs.Cell,
                teacher: Mapping[str, Any] | None, *, search: bool = True
                ) -> dict[str, Any]:
    """The run config of ``cell`` (see the module doc); ``teacher`` is the teacher's.

    ``search=False`` leaves out the search's candidates (a run of the search itself,
    whose weights are its own).
    """
    terms = list(dict.fromkeys(study.terms(cell.method)))
    out = {**_pick(config, study.cell_keys(cell.method)), **_padding(config)}
    if _data.validation_share(config) < 1.0:  # absent: the shared split of older runs
        out["validation_per_seed"] = _data.validation_share(config)
    out["loss"] = {t: config.loss[t].to_dict() for t in terms}
    if search and _search.candidates(config, terms):
        out["search"] = _search.identity(config, terms)
        # The method whose choice it keeps depends on the methods run with it.
        out["search"]["base"] = _search.base_method(cell.method, list(config.methods),
                                                    study.terms, config)
    if depends_on_teacher(study, config, cell.method):
        out["teacher_run"] = dict(teacher if teacher is not None
                                  else teacher_config(study, config))
    out.update(method=cell.method, examples_per_class=cell.examples_per_class,
               seed=cell.seed)
    return _runs.canonical(out)


def search_plan(study: Study, config: ConfigDict, methods: Sequence[str],
                search: dict[str, Any] | None = None
                ) -> dict[_runs.Cell, tuple[str, dict[str, Any]]]:
    """The search's runs: ``{search cell: (method, weights)}`` in training order.

    With ``search`` (the choices made so far), a method whose base method has chosen
    trains only the candidates with the base's values (``_search.to_train``); without
    it, every candidate a run could have (what a work directory may hold).
    """
    every = list(config.methods)
    return {_search.search_cell(m, w, n, s): (m, w)
            for s in _search.seeds(config) for n in _search.sizes(config) for m in methods
            for w in (_search.to_train(config, m, every, study.terms, search)
                      if search is not None else _search.candidates(config, study.terms(m)))}


def run_configs(study: Study, config: ConfigDict, workdir: str,
                selected: Sequence[_runs.Cell]) -> dict[str, dict[str, Any]]:
    """``{run directory: run config}`` of every run the study would train or reuse.

    A finished teacher of another work directory (``config.teacher_dir``) is used as it
    is, whatever its training: it is not among the runs, and the cells record its own
    run config; only the keys of ``teacher_keys`` but its training must match.

    Raises:
      _runs.ConfigChanged: that teacher was made with another network or data.
    """
    t_dir = teacher_dir(config, workdir)
    identity = teacher_config(study, config)
    runs = {t_dir: identity}
    if config.teacher_dir and _runs.is_done(t_dir):
        old = _runs.recorded(t_dir)
        if old is not None:
            keys = [k for k in study.teacher_keys if k not in TEACHER_TRAINING]
            mine = {k: identity[k] for k in keys if k in identity}
            theirs = {k: old[k] for k in keys if k in old}
            if mine != theirs:
                raise _runs.ConfigChanged(
                    f"teacher_dir {t_dir} holds a teacher made with another network or data: "
                    f"{'; '.join(_runs.differences(theirs, mine))}. Give the teacher_dir of "
                    f"a matching teacher, or set --config.teacher_dir='' to train one.")
            identity = old
        else:
            identity = {"teacher_dir": os.path.abspath(t_dir)}
        runs = {}
    for cell in selected:
        runs[_runs.cell_dir(workdir, cell)] = cell_config(study, config, cell, identity)
    search_dir = os.path.join(workdir, _search.SEARCH_DIR)
    plan = search_plan(study, config, list(dict.fromkeys(c.method for c in selected)))
    for cell, (method, weights) in plan.items():
        run = _runs.Cell(method, cell.examples_per_class, cell.seed)
        runs[_runs.cell_dir(search_dir, cell)] = {
            **cell_config(study, config, run, identity, search=False),
            "search_weights": dict(weights)}
    return runs


def check_runs(config: ConfigDict, workdir: str, runs: Mapping[str, Mapping[str, Any]]
               ) -> None:
    """Refuses the started runs whose recorded run config is not the one in ``runs``, or
    deletes them with ``on_change=retrain`` (they train again).

    Raises:
      _runs.ConfigChanged: runs made with another config (names the keys, old -> new).
    """
    changes = _runs.changed(workdir, runs)
    if changes and config.on_change != "retrain":
        raise _runs.ConfigChanged(_runs.describe_changes(workdir, changes))
    t_dir = teacher_dir(config, workdir)
    if config.teacher_dir and t_dir in changes:
        raise _runs.ConfigChanged(
            f"teacher_dir {t_dir} (another work directory's teacher, unfinished) was started "
            f"with another config: {'; '.join(changes[t_dir])}; on_change=retrain deletes "
            f"only this work directory's runs. Give another teacher_dir or delete it.")
    for run_dir in changes:
        print(f"retraining {os.path.relpath(run_dir, workdir)} (config changed: "
              f"{'; '.join(changes[run_dir][:3])})", file=sys.stderr)
        shutil.rmtree(run_dir)


# ----------------------------------------------------------------------------------------
# The checks: before anything loads, and those that need the data's size.


def cells(study: Study, config: ConfigDict) -> list[_runs.Cell]:
    """The sweep's cells, after the study's methods are checked."""
    for method in config.methods:
        study.terms(method)  # fail before training anything
    study.check(config)
    return study.select(config)


def check(study: Study, config: ConfigDict) -> list[_runs.Cell]:
    """Every check of ``config`` that needs no data, the schema's and the study's; the
    cells the study trains or reuses.

    Raises:
      ConfigError: the first bad value, naming its key.
    """
    _checks.validate(config)
    return cells(study, config)


def check_data(study: Study, config: ConfigDict, data: StudyData,
               selected: Sequence[_runs.Cell]) -> None:
    """Every check that needs only the config and the data's size, before the teacher
    trains: the subsets' sizes, the batch sizes, ``k`` of a ``top_k`` Jacobian term.

    Raises:
      ConfigError: names the key, the value and what the data allows.
    """
    train = data.student.splits.train
    for key, sizes in (("examples_per_class", [c.examples_per_class for c in selected]),
                       ("search.sizes", list(config.search.sizes) if "search" in config
                        else [])):
        _data.check_sizes(train, sizes, name=config.get("dataset") or config.get(
            "target_dataset", ""), key=key)
    train_keys = list(dict.fromkeys(study.train_key(m) for m in config.methods))
    _budget.check_batches(config, data.student.num_classes, train_keys)
    classes = data.teacher.num_classes  # a top_k term ranks the teacher's outputs
    for term in dict.fromkeys(t for m in config.methods for t in study.terms(m)):
        args = config.loss[term]
        if args.get("outputs") == "top_k" and args.get("k", 1) > classes:
            raise ConfigError(
                f"config key 'loss.{term}.k' = {args.k}: expected at most the teacher's "
                f"{classes} outputs (outputs='top_k').")
