"""A study's runs trained in lockstep groups (``--config.lockstep``, docs/experiments.md).

Runs of one *program* (:func:`program`) are trained together by
:func:`jaxkd.training.train_lockstep`, one vmapped step for the group; each member keeps
its own seed (subset, batch order, initialisation, step RNG) and term weights, so a
weight search's candidates x seeds of one method form one group. :func:`run`, the
driver's pre-pass, trains the runs not started yet (no ``result.json``, no checkpoint)
and writes in each member's run directory what ``_fit.fit`` writes there, so the
sequential sweep then finds them finished; a run already started resumes on its own. A
group works in ``<workdir>/lockstep/<hash of its members' run directories>/``
(checkpoints, one per evaluation, deleted at its end; ``member_<i>/metrics.jsonl``): a
killed group forms again with the same members and resumes there. A member that goes
non-finite is not written; the sequential sweep then trains it and stops with the
library's ``NonFiniteLossError``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from experiments import _data, _fit, _runs, _search
from jaxkd import training

GROUPS_DIR = "lockstep"
MAX_MEMBERS = 64        # members of a group at most (the compiled step grows with M)
MEMORY_FRACTION = 0.5   # of the device's memory a group's step may take
ACCELERATORS = ("gpu", "tpu", "cuda", "rocm")


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a group: its run directory, method, size, seed and loss weights."""
    run_dir: str
    method: str
    examples_per_class: int | str
    seed: int
    weights: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def enabled(config, backend: str) -> bool:
    """``lockstep='on'``, or ``'auto'`` on a GPU or TPU: on XLA:CPU the vmapped
    convolutions run as grouped convolutions, slower than one student after another."""
    mode = config.get("lockstep", "auto")
    return mode == "on" or (mode == "auto" and backend in ACCELERATORS)


def _objective(study, config, member: Member) -> training.Objective:
    return study.objective(member.method, _search.loss_with(config.loss, member.weights))


def program(study, config, member: Member, train_cfg: Callable[[Member], Any]) -> str:
    """What a member's compiled step depends on, as a key: its method, its terms' names
    and arguments but their weights (those are per member), its training config."""
    loss = _search.loss_with(config.loss, member.weights)
    args = {t: {k: v for k, v in loss[t].to_dict().items() if k != "weight"}
            for t in dict.fromkeys(study.terms(member.method))}
    names = [t.name for t in _objective(study, config, member).terms]
    return json.dumps(_runs.canonical({"method": member.method, "terms": names, "loss": args,
                                       "train": train_cfg(member).to_dict()}), sort_keys=True)


def groups(members: Sequence[Member], key: Callable[[Member], Any], *,
           limit: int = MAX_MEMBERS) -> list[list[Member]]:
    """The members by ``key`` (:func:`program`), in their order, at most ``limit`` a group.

    The size rule: at most :data:`MAX_MEMBERS`, and where the device reports its memory
    (``memory_stats()``, GPUs and TPUs), at most what
    :func:`jaxkd.training.group_size_for_memory` fits in :data:`MEMORY_FRACTION` of it
    (:func:`run` splits a group further by that bound).
    """
    by_key: dict[Any, list[Member]] = {}
    for member in members:
        by_key.setdefault(key(member), []).append(member)
    return [ms[i:i + limit] for ms in by_key.values() for i in range(0, len(ms), limit)]


def member_weights(study, config, group: Sequence[Member]) -> dict[str, list[float]]:
    """``{term name: each member's weight}`` of a group of one program."""
    terms = [_objective(study, config, m).terms for m in group]
    return {t.name: [float(ts[j].weight) for ts in terms] for j, t in enumerate(terms[0])}


def memory_limit(session, member: Member, objective, optimizer, batch_size: int) -> int:
    """The group size bound of :func:`groups` for ``member``'s program."""
    device = session.mesh.devices.flat[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return MAX_MEMBERS
    student = session.study.make_student(session.config, session.data, member.method,
                                         member.seed, session.teacher)
    state = training.init_lockstep_state([student], objective, optimizer,
                                         keys=[jax.random.key(member.seed)])
    shape = (1, batch_size, *session.data.student.image_shape)
    batch = {"image": np.zeros(shape, np.float32), "label": np.zeros(shape[:2], np.int32)}
    teacher = session.teacher if objective.needs_teacher else None
    step = training.make_lockstep_step(objective, optimizer, session.mesh, teacher=teacher)
    return training.group_size_for_memory(step, state, batch,
                                          memory_bytes=int(stats["bytes_limit"]),
                                          fraction=MEMORY_FRACTION, max_members=MAX_MEMBERS)


def run(trainer, members: Sequence[Member], *, desc: str) -> None:
    """Trains the members not started yet, group by group (``trainer``: ``_study.Trainer``)."""
    from jaxkd.training._progress import progress_bar
    s = trainer.s
    todo = [m for m in members if not _runs.started(m.run_dir)]

    def cfg(m: Member):
        return trainer.train_cfg(s.study.train_key(m.method), m.examples_per_class)

    planned = groups(todo, functools.partial(program, s.study, s.config, train_cfg=cfg))
    with progress_bar(len(todo), desc=f"{desc} (lockstep)", unit="cell",
                      disable=not todo) as bar:
        for group in planned:
            objective = _objective(s.study, s.config, group[0])
            optimizer = _fit.build_optimizer(cfg(group[0]))
            limit = memory_limit(s, group[0], objective, optimizer, cfg(group[0]).batch_size)
            for i in range(0, len(group), limit):
                bar.set_postfix_str(f"{len(group[i:i + limit])} x {group[i].method}")
                train(group[i:i + limit], trainer, objective, optimizer, cfg(group[0]))
                bar.update(len(group[i:i + limit]))


def train(group: Sequence[Member], trainer, objective, optimizer, cfg) -> None:
    """Trains ``group`` (one program) with ``train_lockstep`` and writes every member."""
    s, size = trainer.s, len(group)
    config, prepared, mesh = s.config, s.data.student, s.mesh
    _fit.check_batch_size(cfg, mesh)
    weights = member_weights(s.study, config, group)
    subsets = [_data.subset(prepared.splits.train, m.examples_per_class, m.seed) for m in group]
    streams = [_data.train_batches(d, batch_size=cfg.batch_size, seed=m.seed,
                                   augment=config.augment, flip=config.flip,
                                   pad_value=prepared.background)
               for d, m in zip(subsets, group)]
    students = [s.study.make_student(config, s.data, m.method, m.seed, s.teacher)
                for m in group]
    describe = []
    for m in group:
        run_config = s.runs.get(m.run_dir)
        describe.append({**trainer.describe(m.method, m.examples_per_class, m.seed, m.weights),
                         **({_runs.RUN_CONFIG: _runs.canonical(dict(run_config))}
                            if run_config is not None else {})})
        _runs.write_json(os.path.join(m.run_dir, "config.json"), describe[-1])
    names = [os.path.relpath(m.run_dir, s.workdir) for m in group]
    group_dir = os.path.join(s.workdir, GROUPS_DIR,
                             hashlib.sha256("\n".join(names).encode()).hexdigest()[:16])
    every = _fit.eval_every(cfg)
    validation = []  # each member its seed's draw (``_data.seed_validation``)
    for m in group:
        own = _data.seed_validation(prepared.splits.validation, m.seed,
                                    _data.validation_share(config))
        validation.append(_data.eval_batches(own.images, own.labels, cfg.eval_batch_size))
    t0 = time.perf_counter()
    try:
        for end in sorted({*range(every, cfg.num_steps + 1, every), cfg.num_steps}):
            # One call per evaluation: train_lockstep evaluates once, at its num_steps.
            out = training.train_lockstep(
                students, objective, optimizer, streams, workdir=group_dir, num_steps=end,
                seeds=[m.seed for m in group], weights=weights,
                teacher=s.teacher if objective.needs_teacher else None,
                member_eval_data=validation, mesh=mesh, checkpoint_every=every,
                log_every=every,
                max_to_keep=None,  # type: ignore[arg-type]  # the best step is restored
                config={"members": names, "weights": weights, "objective": repr(objective)})
    except training.NonFiniteLossError as e:  # every member did: each trains alone next
        print(f"note: {' '.join(str(e).split())}; its members train on their own next.",
              file=sys.stderr)
        shutil.rmtree(group_dir, ignore_errors=True)
        return
    share = (time.perf_counter() - t0) / size
    done = [i for i in range(size) if not out.failed_step[i]]
    for i in sorted(set(range(size)) - set(done)):
        print(f"note: {names[i]} went non-finite at step {out.failed_step[i]} in its "
              f"lockstep group; it trains on its own next.", file=sys.stderr)
    best: dict[int, Any] = {}
    with training.Checkpointer(os.path.join(group_dir, _runs.CHECKPOINTS),
                               max_to_keep=None) as ckpt:
        for i in done:  # every member's files first: a kill now leaves them to resume alone
            run_dir = group[i].run_dir
            shutil.copyfile(os.path.join(training.member_dir(group_dir, i),
                                         training.METRICS_FILE),
                            os.path.join(run_dir, training.METRICS_FILE))
            curve = {int(r["step"]): float(r["accuracy"])
                     for r in training.read_metrics(run_dir, "eval")}
            step = max(sorted(curve), key=lambda k: curve[k])
            with training.Checkpointer(_runs.checkpoint_dir(run_dir)) as own:
                if step != cfg.num_steps:  # the best step, which _fit.score restores
                    if step not in best:
                        best[step] = ckpt.restore(out.state.members, step=step)
                    state, data_state = best[step]
                    own.save(jax.tree.map(lambda a: a[i], state),
                             data_state["members"][i], step=step)
                own.save(out.state.member(i), streams[i].get_state(), step=cfg.num_steps)
    for i in done:
        _fit.score(group[i].run_dir, out.state.member(i), train_cfg=cfg,
                   test=prepared.splits.test, mesh=mesh, train_examples=len(subsets[i]),
                   started=time.perf_counter() - share,
                   describe={**describe[i], "lockstep": {"group": os.path.relpath(
                       group_dir, s.workdir), "members": size, "member": i}})
    _runs.write_json(os.path.join(group_dir, "members.json"),
                     {"members": names, "failed_step": out.failed_step, "seconds": share * size})
    shutil.rmtree(os.path.join(group_dir, _runs.CHECKPOINTS), ignore_errors=True)
