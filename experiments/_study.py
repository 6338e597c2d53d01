"""The driver every study runs: checks, teacher, weight search, cells, report.

A study declares what is its own in a :class:`_plan.Study` (its method table, data,
student, run identity keys, report, and what runs after the cells); this module does
the rest, the same way for every study:

1. :func:`opened`: the whole config checked once, before anything loads
   (``_plan.check``), then the work directory locked;
2. :func:`start`: every run the study would reuse compared with what the work directory
   recorded (``on_change``), then the mesh, the data and the teacher;
3. :func:`sweep`: the weight search (``_search``) and every cell (``_runs``), each
   distinct train step built once (:class:`Trainer`);
4. :func:`run`: all of it, the study's ``evaluate`` if it has one, and the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
from ml_collections import ConfigDict

from experiments import (_budget, _data, _fit, _grid, _lockstep, _plan, _report, _runs,
                         _runtime, _search, _targets, _workdir)
from experiments._plan import (DATA_KEYS, AUGMENT_PADDING, Study, StudyData,  # noqa: F401
                               cell_config, cells, check, check_runs, run_configs,
                               search_plan, teacher_config, teacher_dir)
from jaxkd import models, training


@contextlib.contextmanager
def opened(study: Study, config: ConfigDict, workdir: str, *, command: str | None = None
           ) -> Iterator[list[_runs.Cell]]:
    """Checks ``config`` (``_plan.check``), gives JAX its host devices, and holds the
    work directory's lock for the block, which gets the study's cells: what a study does
    once, before :func:`start`."""
    selected = _plan.check(study, config)
    _runtime.start_devices(config)
    with _workdir.locked_study(workdir, config, command=command):
        yield selected


@dataclasses.dataclass
class Session:
    """A started study: the work directory's runs checked, the mesh, data and teacher."""
    study: Study
    config: ConfigDict
    workdir: str
    selected: list[_runs.Cell]
    runs: dict[str, dict[str, Any]]
    mesh: Any
    data: StudyData
    teacher: models.Split
    teacher_result: dict[str, Any]


def start(study: Study, config: ConfigDict, workdir: str,
          selected: Sequence[_runs.Cell] | None = None) -> Session:
    """Compares the runs with the config, then the mesh, the data and the teacher.

    Called within :func:`opened` (the config checked, the work directory locked).
    """
    selected = study.select(config) if selected is None else list(selected)
    runs = _plan.run_configs(study, config, workdir, selected)
    _plan.check_runs(config, workdir, runs)
    mesh = _runtime.start(config)
    data = study.prepare(config)
    _plan.check_data(study, config, data, selected)
    t_dir = _plan.teacher_dir(config, workdir)
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
            validation=_data.seed_validation(splits.validation, seed,
                                             _data.validation_share(config)),
            test=splits.test, seed=seed,
            augment=config.augment, flip=config.flip, pad_value=s.data.student.background,
            progress=os.path.relpath(run_dir, s.workdir) if config.run_progress else False,
            tensorboard=config.tensorboard,
            describe=self.describe(method, examples_per_class, seed, weights),
            run_config=s.runs.get(run_dir))

    def describe(self, method: str, examples_per_class, seed: int,
                 weights: Mapping[str, Any]) -> dict[str, Any]:
        """What a cell's ``config.json`` and ``result.json`` say of it (with its run config)."""
        cfg = self.train_cfg(self.s.study.train_key(method), examples_per_class)
        return {"method": method, "examples_per_class": examples_per_class, "seed": seed,
                "loss_weights": dict(weights), "num_steps": cfg.num_steps}


@dataclasses.dataclass
class Outcome:
    """What a sweep produced: every cell's result, the search, the budget, the time."""
    results: dict[_runs.Cell, dict[str, Any]]
    search: dict[str, Any]
    budget: dict[str, int]
    seconds: float


def sweep(session: Session) -> Outcome:
    """Trains (or skips) the weight search and every selected cell."""
    s, trainer = session, Trainer(session)
    lockstep = _lockstep.enabled(s.config, jax.default_backend())
    methods = list(dict.fromkeys(c.method for c in s.selected))
    search_dir = os.path.join(s.workdir, _search.SEARCH_DIR)
    # Bases first: a method that adds terms to another trains its own candidates only
    # at the values its base chose (one round per depth of that chain).
    searched: dict[_runs.Cell, dict[str, Any]] = {}
    search: dict[str, Any] = {"methods": {}}
    done: list[str] = []
    added: dict[str, list[dict[str, Any]]] = {}  # candidates beyond the grids' edges
    for level in _search.levels(s.config, methods, s.study.terms):
        while True:  # a round more while a choice of this level sits on an edge (_grid)
            plan = _plan.search_plan(s.study, s.config, level, search)
            _add_search_runs(s, search_dir, plan)

            def run_search(cell: _runs.Cell, plan=plan) -> dict[str, Any]:
                method, weights = plan[cell]
                run_dir = _runs.cell_dir(search_dir, cell)
                try:
                    return trainer.fit(run_dir, method, cell.examples_per_class, cell.seed,
                                       weights)
                except training.NonFiniteLossError as e:  # a candidate, not the study, fails
                    return _search.diverged(run_dir, e, s.runs.get(run_dir))

            if lockstep:  # the runs not started, in groups; the sweep finds them done
                _lockstep.run(trainer, [_lockstep.Member(_runs.cell_dir(search_dir, c), m,
                                                         c.examples_per_class, c.seed, w)
                                        for c, (m, w) in plan.items()], desc="weight search")
            searched.update(_runs.run_sweep(list(plan), run_search, workdir=search_dir,
                                            desc="weight search"))
            search = _search.choose(s.config, [m for m in methods if m in done + level],
                                    s.study.terms, searched, added)
            more = _grid.extensions(s.config, search, level)
            if not more:
                break
            for method, weights in more.items():
                added.setdefault(method, []).extend(weights)
            search["added"] = {m: list(ws) for m, ws in added.items()}
        done += level
    _grid.extensions(s.config, search, methods)  # every entry's edges (nothing is added)
    search["seconds"] = sum(float(r["seconds"]) for r in searched.values())
    _runs.write_json(os.path.join(s.workdir, _search.SEARCH_FILE), search)

    def run_cell(cell: _runs.Cell) -> dict[str, Any]:
        weights = _search.chosen(search, cell.method)
        run_dir = _runs.cell_dir(s.workdir, cell)
        _search.reuse_run(s.config, s.workdir, cell, weights, s.runs.get(run_dir))
        return trainer.fit(run_dir, cell.method, cell.examples_per_class, cell.seed, weights)

    if lockstep:
        members = []
        for cell in s.selected:
            weights, run_dir = _search.chosen(search, cell.method), _runs.cell_dir(s.workdir, cell)
            _search.reuse_run(s.config, s.workdir, cell, weights, s.runs.get(run_dir))
            members.append(_lockstep.Member(run_dir, cell.method, cell.examples_per_class,
                                            cell.seed, weights))
        _lockstep.run(trainer, members, desc=s.study.name)
    results = _runs.run_sweep(s.selected, run_cell, workdir=s.workdir, desc=s.study.name)
    _search.add_gains(search, s.study.pairs, {**searched, **results})
    _runs.write_json(os.path.join(s.workdir, _search.SEARCH_FILE), search)
    keys = list(dict.fromkeys(s.study.train_key(c.method) for c in s.selected))
    budget = {s.study.budget_label(key, n): trainer.train_cfg(key, n).num_steps
              for key in keys for n in dict.fromkeys(c.examples_per_class for c in s.selected)}
    seconds = float(s.teacher_result["seconds"]) + _search.seconds(search, results)
    return Outcome(results, search, budget, seconds)


def _add_search_runs(s: Session, search_dir: str,
                     plan: Mapping[_runs.Cell, tuple[str, Mapping[str, Any]]]) -> None:
    """Adds to ``s.runs`` the run configs of the search's candidates beyond the grid
    (``_grid``): those of a grid candidate's run of the same method, size and seed, with
    their own ``search_weights``; refuses those started with another (``check_runs``)."""
    new = {}
    for cell, (method, weights) in plan.items():
        run_dir = _runs.cell_dir(search_dir, cell)
        if run_dir in s.runs:
            continue
        grid = _search.candidates(s.config, s.study.terms(method))[0]
        sibling = _search.search_cell(method, grid, cell.examples_per_class, cell.seed)
        new[run_dir] = {**s.runs[_runs.cell_dir(search_dir, sibling)],
                        "search_weights": dict(weights)}
    _plan.check_runs(s.config, s.workdir, new)
    s.runs.update(new)


def summarize(session: Session, outcome: Outcome) -> dict[str, Any]:
    """The study's section of results.json: its own entries, then one row per method x
    size x checkpoint and the paired gains."""
    study, config = session.study, session.config
    sizes, results = _runs.sizes(config), outcome.results
    return {
        **study.summary(config),
        "teacher_test_accuracy": 100.0 * session.teacher_result["last"]["test"],
        "budget": outcome.budget,
        "weight_search": outcome.search if outcome.search.get("methods") else None,
        "rows": _report.accuracy_rows(results, config.methods, sizes, study.label,
                                      lambda m, n: study.paper(config, m, n)),
        "paired_gains": _report.paired_gains(results, study.pairs, methods=config.methods,
                                             sizes=sizes, seeds=_runs.seeds(config),
                                             label=study.label),
        **(study.extra(session, outcome) if study.extra is not None else {}),
    }


def teacher_only(session: Session) -> dict[str, Any]:
    """What a ``teacher_only`` run ends with: the teacher's accuracy printed, its result."""
    print(f"teacher: test accuracy {100 * session.teacher_result['last']['test']:.2f} % "
          f"({_plan.teacher_dir(session.config, session.workdir)})")
    return {"teacher": session.teacher_result}


def run(study: Study, config: ConfigDict, workdir: str, *, command: str | None = None
        ) -> dict[str, Any]:
    """Runs ``study``: checks, teacher, search, cells; writes the results and plots.

    With ``config.teacher_only`` it stops after the teacher (printing its accuracy) and
    returns ``{"teacher": its result}``. Holds the work directory's lock throughout.
    """
    t0 = time.perf_counter()
    with opened(study, config, workdir, command=command) as selected:
        session = start(study, config, workdir, selected)
        if config.teacher_only:
            return teacher_only(session)
        outcome = sweep(session)
        section, seconds = (study.evaluate(session, outcome) if study.evaluate is not None
                            else (summarize(session, outcome), 0.0))
        return _report.finish(study, workdir, section, config=config, started=t0,
                              command=command, total_seconds=outcome.seconds + seconds,
                              num_cells=len(outcome.results))
