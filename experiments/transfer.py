"""Study 3: transfer learning as distillation (Learning without Forgetting, Li & Hoiem).

A teacher is trained on a *source* task (or loaded from ``config.teacher_dir``). A
student of a different architecture learns a *target* task from a few labelled
examples per class while mimicking the teacher on the target images (the teacher
never sees target labels). The student is a backbone with ``K_target + K_source``
outputs: the first ``K_target`` are its target logits (cross-entropy, evaluation), the
last ``K_source`` its old-task head, which matches the teacher's outputs (LwF) and,
optionally, their input Jacobians; attention maps and attention Jacobians of feature
taps of equal size are matched too. Rows, as in the paper:

* ``no_transfer``: the student with cross-entropy only;
* ``finetune``: the oracle: the teacher's architecture initialised from the teacher
  (all but the classifier), fine-tuned with cross-entropy;
* ``lwf``, ``lwf+jacobian``, ``lwf+attention``, ``lwf+attention+attention_jacobian``.

    python -m experiments.transfer --workdir runs/transfer
    python -m experiments.transfer --config=transfer_folder --workdir runs/mit_indoor

Outputs: the ``transfer`` section of ``results.{json,csv,md}`` and
``transfer_accuracy.png`` in the work directory. See docs/experiments.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from experiments import _common, _report
from jaxkd import losses, models, training

STUDY = "transfer"
DEFAULT_CONFIG = "transfer_digits"
DEFAULT_WORKDIR = "runs/transfer"
SOURCE_TAP = "lwf_source_logits"

LABELS = {
    "no_transfer": "no transfer",
    "finetune": "fine-tuning oracle (teacher architecture)",
    "lwf": "LwF",
    "lwf+jacobian": "LwF + Jacobians",
    "lwf+attention": "LwF + attention",
    "lwf+attention+attention_jacobian": "LwF + attention + Jacobians (attention Jacobians)",
}
LWF_TERMS = ("lwf", "jacobian", "attention", "attention_jacobian")
# (without, with) pairs whose per-seed difference isolates one added term.
GAIN_PAIRS = (("no_transfer", "lwf"), ("lwf", "lwf+jacobian"), ("lwf", "lwf+attention"),
              ("lwf+attention", "lwf+attention+attention_jacobian"))


class LwFStudent(models.Classifier):
    """A backbone with ``num_target + num_source`` outputs, seen as a target classifier.

    ``forward`` returns the first ``num_target`` outputs as the logits (what
    cross-entropy and evaluation see) and the remaining ``num_source`` outputs, the
    old-task head, as the feature tap ``lwf_source_logits`` (``[B, 1, 1, num_source]``),
    so the distillation terms reach them through the feature interface. A single
    linear layer over ``K_t + K_s`` outputs is exactly two linear heads on shared
    features. ``aliases`` renames backbone taps (``(("block1", "stage1"), ...)``) so
    that attention transfer pairs them with the teacher's taps of the same size.
    """

    def __init__(self, backbone: models.Classifier, num_target: int,
                 aliases: Sequence[tuple[str, str]] = ()):
        self.backbone = backbone
        self.num_target = num_target
        self.aliases = tuple((str(a), str(b)) for a, b in aliases)

    def forward(self, x: jax.Array):
        out, features = self.backbone(x, return_features=True)
        rename = dict(self.aliases)
        features = {rename.get(k, k): v for k, v in features.items()}
        features[SOURCE_TAP] = out[:, None, None, self.num_target:]
        return out[:, :self.num_target], features


def _source_logits(tap: jax.Array) -> jax.Array:
    return jnp.reshape(tap, (tap.shape[0], -1))


def lwf_distillation(weight: float, *, temperature: float) -> training.Term:
    """KD between the student's old-task head and the teacher (train-mode student pass)."""
    def fn(inputs: training.TermInputs, key: jax.Array) -> jax.Array:
        del key
        return losses.distillation_loss(_source_logits(inputs.student_features[SOURCE_TAP]),
                                        inputs.teacher_logits, temperature=temperature)
    return training.Term("lwf", weight, fn)


def lwf_jacobian(weight: float, *, outputs: str, k: int, normalize: bool) -> training.Term:
    """Jacobian matching between the student's old-task head and the teacher."""
    def fn(inputs: training.TermInputs, key: jax.Array) -> jax.Array:
        del key
        head = inputs.student_feature_fn(SOURCE_TAP)
        return losses.jacobian_matching_loss(lambda x: _source_logits(head(x)),
                                             inputs.teacher_fn, inputs.x, outputs=outputs,
                                             k=k, normalize=normalize)
    return training.Term("lwf_jacobian", weight, fn)


def method_terms(method: str) -> list[str]:
    if method in ("no_transfer", "finetune"):
        return [method]
    terms = method.split("+")
    if terms[0] != "lwf" or any(t not in LWF_TERMS for t in terms):
        raise _common.ConfigError(
            f"transfer method {method!r}: use 'no_transfer', 'finetune', or 'lwf' joined by "
            f"'+' with terms from {LWF_TERMS[1:]} (e.g. 'lwf+attention+attention_jacobian').")
    return terms


def build_objective(method: str, loss: ConfigDict) -> training.Objective:
    terms = [training.cross_entropy(loss.ce_weight)]
    for t in method_terms(method):
        if t == "lwf":
            terms.append(lwf_distillation(loss.kd_weight, temperature=loss.temperature))
        elif t == "jacobian":
            terms.append(lwf_jacobian(loss.jacobian_weight, outputs=loss.jacobian_outputs,
                                      k=loss.jacobian_k, normalize=loss.jacobian_normalize))
        elif t == "attention":
            terms.append(training.attention_transfer(loss.attention_weight,
                                                     layers=tuple(loss.attention_layers)))
        elif t == "attention_jacobian":
            terms.append(training.attention_jacobian(loss.attention_jacobian_weight,
                                                     layer=loss.attention_jacobian_layer))
    return training.Objective(*terms)


def parse_aliases(text: str) -> list[tuple[str, str]]:
    """``"block1:stage1,block2:stage2"`` -> ``[("block1", "stage1"), ("block2", "stage2")]``."""
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        a, sep, b = item.partition(":")
        if not sep:
            raise _common.ConfigError(f"student_tap_aliases item {item!r} is not 'ours:theirs'.")
        pairs.append((a, b))
    return pairs


def prepare(config: ConfigDict):
    """``(source, target)`` prepared data; the target uses the source's statistics."""
    source = _common.load_data(config.source_dataset, data_dir=config.data_dir,
                               image_size=config.image_size,
                               validation_fraction=config.validation_fraction,
                               classes=config.source_classes)
    target = _common.load_data(config.target_dataset, data_dir=config.data_dir,
                               image_size=config.image_size,
                               validation_fraction=config.validation_fraction,
                               classes=config.target_classes,
                               stats_from=(source.mean, source.std))
    if source.image_shape != target.image_shape:
        raise _common.ConfigError(
            f"source images {source.image_shape} and target images {target.image_shape} "
            "differ; set config.image_size.")
    return source, target


def make_student(config: ConfigDict, source, target, method: str, seed: int,
                 teacher: models.Split | None = None) -> models.Classifier:
    if method == "finetune":
        model = _common.build_model(config.teacher, image_shape=target.image_shape,
                                    num_classes=target.num_classes, seed=seed)
        if teacher is not None:  # None: a template for restoring a checkpoint
            trained = models.merge(*teacher)
            body = nnx.state(trained, nnx.Not(nnx.PathContains("head")))
            nnx.update(model, body)  # train() copies the arrays it donates
        return model
    backbone = _common.build_model(config.student, image_shape=target.image_shape,
                                   num_classes=target.num_classes + source.num_classes,
                                   seed=seed)
    return LwFStudent(backbone, target.num_classes, parse_aliases(config.student_tap_aliases))


def teacher(config: ConfigDict, workdir: str, source, mesh):
    run_dir = config.teacher_dir or os.path.join(workdir, "teacher")
    return _common.get_teacher(run_dir, spec=config.teacher, train_cfg=config.teacher_train,
                               prepared=source, mesh=mesh, seed=config.teacher_seed,
                               augment=config.augment, flip=config.flip, progress=True,
                               tensorboard=config.tensorboard)


def cells(config: ConfigDict) -> list[_common.Cell]:
    for method in config.methods:
        method_terms(method)
    return [_common.Cell(m, n, s) for s in _common.seeds(config)
            for n in _common.examples_per_class(config) for m in config.methods]


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Trains (or skips) the teacher and every cell; writes the results and the plot."""
    t0 = time.perf_counter()
    mesh = _common.setup(workdir, config)
    source, target = prepare(config)
    teacher_split, teacher_result = teacher(config, workdir, source, mesh)
    if config.teacher_only:
        print(f"teacher: source test accuracy {100 * teacher_result['last']['test']:.2f} % "
              f"({config.teacher_dir or os.path.join(workdir, 'teacher')})")
        return {"teacher": teacher_result}
    objectives = {m: build_objective(m, config.loss) for m in config.methods}
    splits = target.splits

    def run_cell(cell: _common.Cell) -> dict[str, Any]:
        distills = cell.method not in ("no_transfer", "finetune")
        return _common.fit(
            _common.cell_dir(workdir, cell),
            student=make_student(config, source, target, cell.method, cell.seed,
                                 teacher_split),
            objective=objectives[cell.method],
            train_cfg=config.finetune_train if cell.method == "finetune" else config.train,
            train_set=_common.subset(splits.train, cell.examples_per_class, cell.seed),
            validation=splits.validation, test=splits.test, mesh=mesh, seed=cell.seed,
            teacher=teacher_split if distills else None, augment=config.augment,
            flip=config.flip, progress=config.run_progress, tensorboard=config.tensorboard,
            describe={"method": cell.method, "examples_per_class": cell.examples_per_class,
                      "seed": cell.seed})

    results = _common.run_sweep(cells(config), run_cell, workdir=workdir, desc=STUDY)
    rows = []
    for method in config.methods:
        for n in _common.examples_per_class(config):
            runs = [r for c, r in results.items()
                    if c.method == method and c.examples_per_class == n]
            for which in ("last", "best"):
                rows.append({
                    "method": method, "label": LABELS.get(method, method),
                    "examples_per_class": n, "checkpoint": which,
                    **_report.stats([100.0 * r[which]["test"] for r in runs]),
                    "paper": _report.paper_transfer(config.paper_table, method, n)})
    gains = _report.paired_gains(
        results, GAIN_PAIRS, methods=config.methods,
        sizes=_common.examples_per_class(config), seeds=_common.seeds(config),
        label=lambda m: LABELS.get(m, m))
    summary = {
        "paired_gains": gains,
        "source": f"{config.source_dataset} classes {list(config.source_classes) or 'all'}",
        "target": f"{config.target_dataset} classes {list(config.target_classes) or 'all'}",
        "teacher_model": config.teacher.name, "student_model": config.student.name,
        "teacher_test_accuracy": 100.0 * teacher_result["last"]["test"], "rows": rows,
    }
    return _common.write_summary(workdir, STUDY, summary, config=config, started=t0,
                                 seconds=[teacher_result["seconds"]]
                                 + [r["seconds"] for r in results.values()],
                                 command=command)


def main(argv: Sequence[str] | None = None) -> None:
    _common.main(STUDY, run, default_config=DEFAULT_CONFIG, default_workdir=DEFAULT_WORKDIR,
                 argv=argv)


if __name__ == "__main__":
    main()
