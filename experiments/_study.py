"""The driver every sweep study runs: checks, teacher, weight search, cells, summary.

A study (``limited_data``, ``transfer``) declares what is its own in a :class:`Study`:
its method table (method -> loss terms -> objective), its data, its student, the config
keys that change its teacher and its cells, its labels, paper numbers, gain pairs, and
its report. This module does the rest, the same way for every study:

1. :func:`opened`: the whole config checked once, before anything loads
   (``_base.validate`` and the study's own methods), and the work directory locked;
2. :func:`start`: the run configs (below) of every run the study would reuse are
   compared with what the work directory recorded (``on_change``), then the mesh, the
   data and the teacher;
3. :func:`sweep`: the weight search (``_search``) and every cell (``_sweep``), each
   distinct train step built once (:class:`Trainer`);
4. :func:`run`: all of it and the report (``_report``).

**Run identity.** A run's *run config* is what determines its result: for the teacher,
the config keys the study lists in ``teacher_keys`` (an allow-list); for a cell, the keys
of ``cell_keys(method)``, its method's ``loss.<term>`` sub-configs, the part of the
search that chooses its weights, its method, size and seed, and the teacher's own run
config when the cell depends on the teacher (its objective reads the teacher, or its
student starts from it). It is recorded in ``config.json`` and ``result.json``
(``_fit.fit`` gets it as an argument).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from flax import nnx
from ml_collections import ConfigDict

from experiments import (_budget, _data, _fit, _report, _runs, _runtime, _search, _sweep,
                         _targets, _workdir)
from experiments.configs import _base
from jaxkd import models, training

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
    extra: Callable[[Session, Outcome], dict[str, Any]] | None = None
    select: Callable[[ConfigDict], list[_sweep.Cell]] = _sweep.cells
    evaluate: Callable[[Session, Outcome], tuple[dict[str, Any], float]] | None = None


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


def cell_config(study: Study, config: ConfigDict, cell: _sweep.Cell,
                teacher: Mapping[str, Any] | None, *, search: bool = True
                ) -> dict[str, Any]:
    """The run config of ``cell`` (see the module doc); ``teacher`` is the teacher's.

    ``search=False`` leaves out the search's candidates (a run of the search itself,
    whose weights are its own).
    """
    terms = list(dict.fromkeys(study.terms(cell.method)))
    out = {**_pick(config, study.cell_keys(cell.method)), **_padding(config)}
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
                ) -> dict[_sweep.Cell, tuple[str, dict[str, Any]]]:
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
                selected: Sequence[_sweep.Cell]) -> dict[str, dict[str, Any]]:
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
        runs[_sweep.cell_dir(workdir, cell)] = cell_config(study, config, cell, identity)
    search_dir = os.path.join(workdir, _search.SEARCH_DIR)
    plan = search_plan(study, config, list(dict.fromkeys(c.method for c in selected)))
    for cell, (method, weights) in plan.items():
        run = _sweep.Cell(method, cell.examples_per_class, cell.seed)
        runs[_sweep.cell_dir(search_dir, cell)] = {
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
# Checks, start, the sweep.


def cells(study: Study, config: ConfigDict) -> list[_sweep.Cell]:
    """The sweep's cells, after the study's methods are checked."""
    for method in config.methods:
        study.terms(method)  # fail before training anything
    study.check(config)
    return study.select(config)


def check(study: Study, config: ConfigDict) -> None:
    """Every check of ``config`` that needs no data: the schema's and the study's.

    Raises:
      ConfigError: the first bad value, naming its key.
    """
    _base.validate(config)
    cells(study, config)


@contextlib.contextmanager
def opened(study: Study, config: ConfigDict, workdir: str, *, command: str | None = None
           ) -> Iterator[None]:
    """Checks ``config`` (:func:`check`), gives JAX its host devices, and holds the work
    directory's lock for the block: what a study does once, before :func:`start`."""
    check(study, config)
    _runtime.start_devices(config)
    with _workdir.locked_study(workdir, config, command=command):
        yield


@dataclasses.dataclass
class Session:
    """A started study: the work directory's runs checked, the mesh, data and teacher."""
    study: Study
    config: ConfigDict
    workdir: str
    selected: list[_sweep.Cell]
    runs: dict[str, dict[str, Any]]
    mesh: Any
    data: StudyData
    teacher: models.Split
    teacher_result: dict[str, Any]


def start(study: Study, config: ConfigDict, workdir: str,
          selected: Sequence[_sweep.Cell] | None = None) -> Session:
    """Compares the runs with the config, then the mesh, the data and the teacher.

    Called within :func:`opened` (the config checked, the work directory locked).
    """
    selected = study.select(config) if selected is None else list(selected)
    runs = run_configs(study, config, workdir, selected)
    check_runs(config, workdir, runs)
    mesh = _runtime.start(config)
    data = study.prepare(config)
    train_keys = list(dict.fromkeys(study.train_key(m) for m in config.methods))
    _budget.check_batches(config, data.student.num_classes, train_keys)
    t_dir = teacher_dir(config, workdir)
    teacher, teacher_result = _fit.get_teacher(
        t_dir, spec=config.teacher, train_cfg=config.teacher_train, prepared=data.teacher,
        mesh=mesh, seed=config.teacher_seed, augment=config.augment, flip=config.flip,
        tensorboard=config.tensorboard, run_config=runs.get(t_dir))
    return Session(study, config, workdir, selected, runs, mesh, data, teacher,
                   teacher_result)


class Trainer:
    """Fits one network of a session; builds each distinct train step once.

    The budget of a size (``_budget``) is the same for every cell of that size, so the
    cells of one method, weights and step count share one built (compiled) step. The
    cells of one size and seed read the same stream of batches: the teacher's targets of
    each batch are computed once for every method that can be fed them
    (``_targets``); the others run the teacher in their step.
    """

    def __init__(self, session: Session):
        self.s = session
        self._train_cfgs: dict[Any, ConfigDict] = {}
        self._steps: dict[Any, training.TrainStep] = {}
        config = session.config
        options = _targets.stream_options(
            [session.study.objective(m, config.loss) for m in config.methods])
        self.targets = (None if options is None or not config.share_teacher_targets else
                        _targets.SharedTargets(session.teacher, session.mesh, options))

    def train_cfg(self, key: str, examples_per_class) -> ConfigDict:
        """``config[key]`` with the size's budget (``_budget``)."""
        if (key, examples_per_class) not in self._train_cfgs:
            train = self.s.data.student.splits.train
            n = len(_data.subset(train, examples_per_class, 0))
            self._train_cfgs[(key, examples_per_class)] = _budget.for_size(
                self.s.config[key], n, **_budget.settings(self.s.config))
        return self._train_cfgs[(key, examples_per_class)]

    def step(self, method: str, weights: Mapping[str, Any], examples_per_class
             ) -> training.TrainStep:
        cfg = self.train_cfg(self.s.study.train_key(method), examples_per_class)
        key = (method, tuple(sorted(weights.items())), cfg.num_steps)
        if key not in self._steps:
            objective = self.s.study.objective(
                method, _search.loss_with(self.s.config.loss, weights))
            self._steps[key] = training.make_train_step(
                objective, _fit.build_optimizer(cfg), self.s.mesh,
                teacher=self.s.teacher if objective.needs_teacher else None)
        return self._steps[key]

    def fit(self, run_dir: str, method: str, examples_per_class, seed: int,
            weights: Mapping[str, Any]) -> dict[str, Any]:
        s = self.s
        config, splits = s.config, s.data.student.splits
        cfg = self.train_cfg(s.study.train_key(method), examples_per_class)
        step = self.step(method, weights, examples_per_class)
        train_set = _data.subset(splits.train, examples_per_class, seed)
        feed = None
        if self.targets is not None and _targets.serves(self.targets.options, step.objective):
            stream = (examples_per_class, seed, cfg.batch_size, config.augment, config.flip)
            feed = functools.partial(self.targets.feed, stream, seed=seed,
                                     batch_size=cfg.batch_size, num_examples=len(train_set))
        return _fit.fit(
            run_dir,
            student=s.study.make_student(config, s.data, method, seed, s.teacher),
            step=step, train_cfg=cfg, feed=feed,
            train_set=train_set,
            validation=splits.validation, test=splits.test, seed=seed,
            augment=config.augment, flip=config.flip, pad_value=s.data.student.background,
            progress=os.path.relpath(run_dir, s.workdir) if config.run_progress else False,
            tensorboard=config.tensorboard,
            describe={"method": method, "examples_per_class": examples_per_class,
                      "seed": seed, "loss_weights": dict(weights),
                      "num_steps": cfg.num_steps},
            run_config=s.runs.get(run_dir))


@dataclasses.dataclass
class Outcome:
    """What a sweep produced: every cell's result, the search, the budget, the time."""
    results: dict[_sweep.Cell, dict[str, Any]]
    search: dict[str, Any]
    budget: dict[str, int]
    seconds: float


def sweep(session: Session) -> Outcome:
    """Trains (or skips) the weight search and every selected cell."""
    s, trainer = session, Trainer(session)
    methods = list(dict.fromkeys(c.method for c in s.selected))
    search_dir = os.path.join(s.workdir, _search.SEARCH_DIR)
    # Bases first: a method that adds terms to another trains its own candidates only
    # at the values its base chose (one round per depth of that chain).
    searched: dict[_sweep.Cell, dict[str, Any]] = {}
    search: dict[str, Any] = {"methods": {}}
    done: list[str] = []
    for level in _search.levels(s.config, methods, s.study.terms):
        plan = search_plan(s.study, s.config, level, search)

        def run_search(cell: _sweep.Cell, plan=plan) -> dict[str, Any]:
            method, weights = plan[cell]
            return trainer.fit(_sweep.cell_dir(search_dir, cell), method,
                               cell.examples_per_class, cell.seed, weights)

        searched.update(_sweep.run_sweep(list(plan), run_search, workdir=search_dir,
                                         desc="weight search"))
        done += level
        search = _search.choose(s.config, [m for m in methods if m in done],
                                s.study.terms, searched)
    search["seconds"] = sum(float(r["seconds"]) for r in searched.values())
    _runs.write_json(os.path.join(s.workdir, _search.SEARCH_FILE), search)

    def run_cell(cell: _sweep.Cell) -> dict[str, Any]:
        weights = _search.chosen(search, cell.method)
        run_dir = _sweep.cell_dir(s.workdir, cell)
        _search.reuse_run(s.config, s.workdir, cell, weights, s.runs.get(run_dir))
        return trainer.fit(run_dir, cell.method, cell.examples_per_class, cell.seed, weights)

    results = _sweep.run_sweep(s.selected, run_cell, workdir=s.workdir, desc=s.study.name)
    _search.add_gains(search, s.study.pairs, {**searched, **results})
    _runs.write_json(os.path.join(s.workdir, _search.SEARCH_FILE), search)
    keys = list(dict.fromkeys(s.study.train_key(c.method) for c in s.selected))
    budget = {s.study.budget_label(key, n): trainer.train_cfg(key, n).num_steps
              for key in keys for n in dict.fromkeys(c.examples_per_class for c in s.selected)}
    seconds = float(s.teacher_result["seconds"]) + _search.seconds(search, results)
    return Outcome(results, search, budget, seconds)


def summarize(session: Session, outcome: Outcome) -> dict[str, Any]:
    """The study's section of results.json: its own entries, then one row per method x
    size x checkpoint and the paired gains."""
    study, config = session.study, session.config
    sizes, results = _sweep.sizes(config), outcome.results
    return {
        **study.summary(config),
        "teacher_test_accuracy": 100.0 * session.teacher_result["last"]["test"],
        "budget": outcome.budget,
        "weight_search": outcome.search if outcome.search.get("methods") else None,
        "rows": _report.accuracy_rows(results, config.methods, sizes, study.label,
                                      lambda m, n: study.paper(config, m, n)),
        "paired_gains": _report.paired_gains(results, study.pairs, methods=config.methods,
                                             sizes=sizes, seeds=_sweep.seeds(config),
                                             label=study.label),
        **(study.extra(session, outcome) if study.extra is not None else {}),
    }


def teacher_only(session: Session) -> dict[str, Any]:
    """What a ``teacher_only`` run ends with: the teacher's accuracy printed, its result."""
    print(f"teacher: test accuracy {100 * session.teacher_result['last']['test']:.2f} % "
          f"({teacher_dir(session.config, session.workdir)})")
    return {"teacher": session.teacher_result}


def run(study: Study, config: ConfigDict, workdir: str, *, command: str | None = None
        ) -> dict[str, Any]:
    """Runs ``study``: checks, teacher, search, cells; writes the results and plots.

    With ``config.teacher_only`` it stops after the teacher (printing its accuracy) and
    returns ``{"teacher": its result}``. Holds the work directory's lock throughout.
    """
    t0 = time.perf_counter()
    with opened(study, config, workdir, command=command):
        session = start(study, config, workdir)
        if config.teacher_only:
            return teacher_only(session)
        outcome = sweep(session)
        section, seconds = (study.evaluate(session, outcome) if study.evaluate is not None
                            else (summarize(session, outcome), 0.0))
        return _report.finish(study, workdir, section, config=config, started=t0,
                              command=command, total_seconds=outcome.seconds + seconds,
                              num_cells=len(outcome.results))
