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

Outputs: the ``transfer`` section of ``results.{json,csv,md}``, ``transfer_accuracy.png``
and ``transfer_gain.png`` in the work directory. The section's ``teacher_probe`` rows say
what the teacher knows about the target task: the target accuracy of a linear probe on
its features, on its outputs (what LwF distils) and on raw pixels (``_probe``; the fits
are cached in ``<workdir>/teacher_probe.json``). See docs/experiments.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from experiments import (_cli, _data, _fit, _plots, _probe, _report, _search, _study,
                         _runs)
from experiments.configs._base import ConfigError
from jaxkd import losses, models, training

DEFAULT_CONFIG = "transfer_digits"
DEFAULT_WORKDIR = "runs/transfer"
ABOUT = ("Study 3: a source-task teacher distilled into a target-task student (LwF) with "
         "Jacobian and attention terms; needs a source and a target dataset (default: the "
         "offline digits 0-4 -> 5-9).")
SOURCE_TAP = "lwf_source_logits"

LABELS = {
    "no_transfer": "no transfer",
    "finetune": "fine-tuning oracle (teacher architecture)",
    "lwf": "LwF",
    "lwf+jacobian": "LwF + Jacobians",
    "lwf+attention": "LwF + attention",
    "lwf+attention+attention_jacobian": "LwF + attention + Jacobians (attention Jacobians)",
}
# Transfer: ImageNet ResNet teacher -> VGG-9 student on MIT Indoor Scenes (67 classes),
# test accuracy (%) at 25, 50 and all examples per class, Srinivas & Fleuret (2018)
# (docs/experiments.md). Keys are the rows of LABELS, in order.
PAPER_SIZES = (25, 50, "all")
PAPER = dict(zip(LABELS, [(35.19, 46.38, 59.33), (57.65, 64.18, 71.42),
                          (45.08, 55.22, 65.22), (45.26, 56.49, 66.04),
                          (46.01, 57.80, 67.24), (47.31, 58.35, 67.31)]))
# (without, with) pairs whose per-seed difference isolates one added term.
GAIN_PAIRS = (("no_transfer", "lwf"), ("lwf", "lwf+jacobian"), ("lwf", "lwf+attention"),
              ("lwf+attention", "lwf+attention+attention_jacobian"))


class LwFStudent(models.Classifier):
    """A backbone with ``num_target + num_source`` outputs, seen as a target classifier.

    ``forward`` returns the first ``num_target`` outputs as the logits and the rest, the
    old-task head, as the feature tap ``lwf_source_logits`` (``[B, 1, 1, num_source]``)
    for the distillation terms; ``aliases`` renames backbone taps (``(("block1",
    "stage1"), ...)``) to pair them with the teacher's taps of the same size.
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
    return training.Term("lwf", weight, fn, targets={})


def lwf_jacobian(weight: float, *, outputs: str, k: int, normalize: bool) -> training.Term:
    """Jacobian matching between the student's old-task head and the teacher."""
    def fn(inputs: training.TermInputs, key: jax.Array) -> jax.Array:
        del key
        head = inputs.student_feature_fn(SOURCE_TAP)
        return losses.jacobian_matching_loss(lambda x: _source_logits(head(x)),
                                             inputs.teacher, inputs.x, outputs=outputs,
                                             k=k, normalize=normalize)
    return training.Term("lwf_jacobian", weight, fn, targets={"outputs": outputs, "k": k})


# The method table. Every row trains with cross-entropy on the target; "no_transfer"
# and "finetune" with it alone (finetune's student starts from the teacher), the LwF
# rows add "lwf" and any of the other terms, joined by "+". Each term is built by its
# constructor from its config ``loss.<term>`` (the constructor's keyword arguments).
TERMS = {
    "ce": (training.cross_entropy, "CE"),
    "lwf": (lwf_distillation, "LwF"),
    "jacobian": (lwf_jacobian, "Jacobians"),
    "attention": (training.attention_transfer, "attention"),
    "attention_jacobian": (training.attention_jacobian, "attention Jacobians"),
}
ALONE = ("no_transfer", "finetune")  # the rows of cross-entropy alone


def method_terms(method: str) -> list[str]:
    if method in ALONE:
        return ["ce"]
    terms = method.split("+")
    added = [t for t in TERMS if t not in ("ce", "lwf")]
    if terms[0] != "lwf" or any(t not in added for t in terms[1:]):
        raise ConfigError(
            f"transfer method {method!r}: use 'no_transfer', 'finetune', or 'lwf' joined by "
            f"'+' with terms from {tuple(added)} (e.g. 'lwf+attention+attention_jacobian').")
    return ["ce", *terms]


def build_objective(method: str, loss: ConfigDict) -> training.Objective:
    """The :class:`jaxkd.training.Objective` of ``method`` with ``loss``'s arguments."""
    return training.Objective(*(TERMS[t][0](**loss[t]) for t in method_terms(method)))


def parse_aliases(text: str) -> list[tuple[str, str]]:
    """``"block1:stage1,block2:stage2"`` -> ``[("block1", "stage1"), ("block2", "stage2")]``."""
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        a, sep, b = item.partition(":")
        if not sep:
            raise ConfigError(f"student_tap_aliases item {item!r} is not 'ours:theirs'.")
        pairs.append((a, b))
    return pairs


def label(method: str) -> str:
    """The paper's row name where it has one, else the terms joined."""
    return LABELS.get(method) or " + ".join(TERMS[t][1] for t in method_terms(method)[1:])


def paper_number(paper_table: str, method: str, examples_per_class) -> float | None:
    """The paper's transfer number, when the config declares the MIT Indoor setting."""
    if paper_table != "mit_indoor":
        return None
    return dict(zip(PAPER_SIZES, PAPER.get(method, ()))).get(examples_per_class)


def prepare(config: ConfigDict) -> _study.StudyData:
    """The source (the teacher's) and target (the students') data; the target uses the
    source's statistics."""
    source = _data.load_data(config.source_dataset, data_dir=config.data_dir,
                             image_size=config.image_size,
                             validation_fraction=config.validation_fraction,
                             classes=config.source_classes)
    target = _data.load_data(config.target_dataset, data_dir=config.data_dir,
                             image_size=config.image_size,
                             validation_fraction=config.validation_fraction,
                             classes=config.target_classes,
                             stats_from=(source.mean, source.std))
    if source.image_shape != target.image_shape:
        raise ConfigError(
            f"source images {source.image_shape} and target images {target.image_shape} "
            "differ; set config.image_size.")
    return _study.StudyData(teacher=source, student=target)


def make_student(config: ConfigDict, data: _study.StudyData, method: str, seed: int,
                 teacher: models.Split | None = None) -> models.Classifier:
    """The oracle's network started from ``teacher``, or an LwF student."""
    source, target = data
    if method == "finetune":
        model = _fit.build_model(config.teacher, image_shape=target.image_shape,
                                 num_classes=target.num_classes, seed=seed)
        if teacher is not None:  # None: a template for restoring a checkpoint
            trained = models.merge(*teacher)
            body = nnx.state(trained, nnx.Not(nnx.PathContains("head")))
            nnx.update(model, body)  # train() copies the arrays it donates
        return model
    backbone = _fit.build_model(config.student, image_shape=target.image_shape,
                                num_classes=target.num_classes + source.num_classes,
                                seed=seed)
    return LwFStudent(backbone, target.num_classes, parse_aliases(config.student_tap_aliases))


# ----------------------------------------------------------------------------------------
# The report of this study.


REPORT = dict(what="Target test accuracy", gains_title="Gain from each added term")


def _scratch(s: dict[str, Any]) -> dict[Any, float]:
    """The student trained from scratch (``no_transfer``, last step): {size: accuracy}."""
    return {r["examples_per_class"]: r["mean"] for r in s.get("rows") or []
            if r["method"] == "no_transfer" and r["checkpoint"] == "last"}


def markdown(s: dict[str, Any]) -> str:
    appendix = (_probe.markdown(s.get("teacher_probe"), _scratch(s))
                + _search.markdown(s.get("weight_search"), label))
    return _report.accuracy_section(
        s, title="Study 3: transfer learning (LwF as distillation)",
        intro=f"Source: `{s['source']}`, target: `{s['target']}`; teacher "
              f"`{s['teacher_model']}` (source test accuracy "
              f"{s['teacher_test_accuracy']:.1f} %), student `{s['student_model']}`; target "
              "test accuracy (%), mean ± std over seeds.",
        paper_note="The paper's numbers (MIT Indoor 67) are not beside ours: the setting "
                   "differs.", notes=_report.budget_notes(s),
        appendix=appendix, **REPORT)


def console(s: dict[str, Any]) -> str:
    if "rows" not in s:
        return ""
    return "\n".join(_report.main_tables(s, **REPORT)
                     + _probe.markdown(s.get("teacher_probe"), _scratch(s))
                     + _search.markdown(s.get("weight_search"), label)).strip()


def plots(workdir: str, s: dict[str, Any]) -> list[str]:
    plt = _plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    methods = s["config"]["methods"]
    for ax, which in zip(axes, ("last", "best")):
        _plots.bars(ax, [r for r in s["rows"] if r["checkpoint"] == which],
                    x_key="examples_per_class", methods=methods)
        ax.set_xlabel("target examples per class")
        ax.set_ylabel("target test accuracy (%)")
        ax.set_title(f"transfer, {which} step" + (" (by validation)" if which == "best"
                                                  else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths = [_plots.save(fig, workdir, "transfer_accuracy.png", layout=False)]
    return paths + _plots.gain_figure(
        workdir, "transfer_gain.png", s.get("paired_gains") or [],
        title="transfer: gain from each added term (paired by "
              "seed, last step)", methods=methods)


# The config keys that change the teacher, and a cell of a method (with its loss terms).
DATA_KEYS = ("source_dataset", "source_classes", *_study.DATA_KEYS)
TEACHER_KEYS = (*DATA_KEYS, "teacher", "teacher_train", "teacher_seed")
BUDGET_KEYS = ("train_epochs", "train_max_steps")


def cell_keys(method: str) -> tuple[str, ...]:
    """The oracle trains the teacher's network with ``finetune_train``; the others the
    student with ``train``."""
    own = (("finetune_train",) if method == "finetune"
           else ("student", "student_tap_aliases", "train"))
    return (*DATA_KEYS, "target_dataset", "target_classes", *own, *BUDGET_KEYS)


def check(config: ConfigDict) -> None:
    parse_aliases(config.student_tap_aliases)


# The config keys of the target images (with the teacher's, which include the source
# data: the target is normalised with the source's statistics).
TARGET_KEYS = ("target_dataset", "target_classes")


def teacher_probe(session: _study.Session, outcome: _study.Outcome) -> dict[str, Any]:
    """The section's ``teacher_probe`` rows (``_probe``): on each size and seed's target
    subset, a linear probe of the teacher's features, its outputs, and raw pixels.

    Cached in ``<workdir>/teacher_probe.json`` under the teacher (its directory, recorded
    run config and final accuracies) and the target data.
    """
    del outcome
    config = session.config
    t_dir = _study.teacher_dir(config, session.workdir)
    identity = {"teacher_dir": os.path.abspath(t_dir), "teacher_run": _runs.recorded(t_dir),
                "teacher_last": session.teacher_result["last"],
                "data": {**_study.teacher_config(STUDY, config),
                         **{k: config[k] for k in TARGET_KEYS}}}
    sizes, seeds = _runs.sizes(config), _runs.seeds(config)
    probe = _probe.run(session.teacher, session.data.student, sizes, seeds,
                       mesh=session.mesh, identity=identity,
                       cache=os.path.join(session.workdir, _probe.PROBE_FILE))
    return {"teacher_probe": _probe.rows(probe, sizes, seeds)}


STUDY = _study.Study(
    name="transfer", terms=method_terms, objective=build_objective, label=label,
    prepare=prepare, make_student=make_student, teacher_keys=TEACHER_KEYS,
    cell_keys=cell_keys,
    summary=lambda config: {
        "source": f"{config.source_dataset} classes {list(config.source_classes) or 'all'}",
        "target": f"{config.target_dataset} classes {list(config.target_classes) or 'all'}",
        "teacher_model": config.teacher.name, "student_model": config.student.name},
    paper=lambda config, method, n: paper_number(config.paper_table, method, n),
    pairs=GAIN_PAIRS, markdown=markdown, plots=plots, console=console, check=check,
    train_key=lambda method: "finetune_train" if method == "finetune" else "train",
    starts_from_teacher=lambda method: method == "finetune",
    budget_label=lambda key, n: (f"{'finetune' if key == 'finetune_train' else 'students'} "
                                 f"n={n}"),
    extra=teacher_probe)


def cells(config: ConfigDict) -> list[_runs.Cell]:
    """The sweep's cells (the methods checked against the method table)."""
    return _study.cells(STUDY, config)


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Runs the study (``_study.run``): its section of the results, the plots; the summary."""
    return _study.run(STUDY, config, workdir, command=command)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(STUDY.name, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, about=ABOUT, argv=argv)


if __name__ == "__main__":
    main()
