"""The method table of studies 1 and 2: one data set, a teacher, students distilled from it.

Study 1 (``limited_data``) reports these students' accuracy, study 2
(``noise_robustness``) the same students under noise: both declare a
:class:`_study.Study` with :data:`FIELDS`, so their runs are the same runs of one work
directory (docs/experiments.md lists the methods).
"""

from __future__ import annotations

from ml_collections import ConfigDict

from experiments import _data, _fit
from experiments.configs._base import ConfigError
from jaxkd import training

# The method table: a method is loss terms joined by "+", e.g. "kd+jacobian+ce". Each
# term is built by its jaxkd.training constructor from its config ``loss.<term>`` (the
# constructor's keyword arguments) and labelled in the report.
TERMS = {
    "ce": (training.cross_entropy, "CE"),
    "kd": (training.distillation, "KD"),
    "logits": (training.logit_matching, "match activations"),
    "jacobian": (training.jacobian_matching, "Jacobians"),
    "vjp": (training.vjp_projection, "Jacobians (VJP projection)"),
    "jvp": (training.jvp_projection, "Jacobians (JVP projection)"),
    "fd": (training.finite_difference, "Jacobians (finite differences)"),
    "jacobian_raw": (training.jacobian_matching, "Jacobians (unnormalised, top-1)"),
    "jacobian_all": (training.jacobian_matching, "Jacobians (unnormalised, all outputs)"),
    "noisy": (training.noisy_distillation, "noisy distillation"),
    "noisy_kl": (training.noisy_distillation, "noisy distillation (KL)"),
    "attention": (training.attention_transfer, "attention"),
    "attention_jacobian": (training.attention_jacobian, "attention Jacobians"),
}
# The paper's row names for the methods that are exactly its rows.
PAPER_LABELS = {
    "ce": "cross-entropy only",
    "logits+ce": "match activations + CE",
    "logits+jacobian+ce": "match activations + Jacobians + CE",
    "logits": "match activations only",
    "logits+jacobian": "match activations + Jacobians",
}
# Srinivas & Fleuret (2018), from the authors' poster and slides (docs/experiments.md).
# CIFAR-100, VGG-9 teacher (64.78 %) -> VGG-4 student, test accuracy (%) at 10, 50 and
# all (500) examples per class.
PAPER_SIZES = (10, 50, "all")
PAPER = dict(ce=(20.03, 37.6, 54.28), logits=(33.6, 45.73, 56.59))
PAPER.update({"logits+ce": (33.92, 46.47, 56.65), "logits+jacobian+ce": (39.55, 49.49, 54.57),
              "logits+jacobian": (38.16, 47.79, 51.33)})
# (without, with) pairs whose per-seed difference isolates the Jacobian term.
JACOBIAN_PAIRS = (("logits+ce", "logits+jacobian+ce"), ("logits", "logits+jacobian"),
                  ("kd+ce", "kd+jacobian+ce"), ("kd+ce", "kd+vjp+ce"), ("kd+ce", "kd+jvp+ce"),
                  ("kd+ce", "kd+fd+ce"),
                  ("logits+ce", "noisy+ce"), ("kd+ce", "kd+jacobian_raw+ce"),
                  ("kd+ce", "kd+jacobian_all+ce"), ("kd+ce", "kd+noisy+ce"),
                  ("kd+ce", "kd+noisy_kl+ce"))
# The config keys that change the teacher, and a student cell (with its loss terms).
TEACHER_KEYS = ("dataset", *_data.DATA_KEYS, "teacher", "teacher_train", "teacher_seed")
CELL_KEYS = ("dataset", *_data.DATA_KEYS, "student", "train", "train_epochs",
             "train_max_steps")


def method_terms(method: str) -> list[str]:
    terms = [t.strip() for t in method.split("+") if t.strip()]
    unknown = [t for t in terms if t not in TERMS]
    if not terms or unknown:
        raise ConfigError(f"method {method!r}: unknown loss term(s) {unknown}; a method is "
                          f"terms joined by '+' from {sorted(TERMS)}.")
    return terms


def method_label(method: str) -> str:
    """A readable name: the paper's row name where it has one, else the terms joined."""
    return PAPER_LABELS.get(method) or " + ".join(TERMS[t][1] for t in method_terms(method))


def paper_number(dataset: str, method: str, examples_per_class) -> float | None:
    """The paper's number for this cell, only when the setting is the paper's (CIFAR-100)."""
    if dataset.removeprefix("tfds:").split("/")[0].split(":")[0] != "cifar100":
        return None
    return dict(zip(PAPER_SIZES, PAPER.get(method, ()))).get(examples_per_class)


def build_objective(method: str, loss: ConfigDict) -> training.Objective:
    """The :class:`jaxkd.training.Objective` of ``method`` with ``loss``'s arguments."""
    return training.Objective(*(TERMS[t][0](**loss[t]) for t in method_terms(method)))


def prepare(config: ConfigDict) -> _data.StudyData:
    data = _data.load_data(config.dataset, data_dir=config.data_dir,
                           image_size=config.image_size,
                           validation_fraction=config.validation_fraction)
    return _data.StudyData(teacher=data, student=data)


def make_student(config: ConfigDict, data: _data.StudyData, method: str, seed: int,
                 teacher=None):
    del method, teacher  # every method trains the same student network
    return _fit.build_model(config.student, image_shape=data.student.image_shape,
                            num_classes=data.student.num_classes, seed=seed)


# What studies 1 and 2 declare alike in their ``_study.Study``.
FIELDS = dict(terms=method_terms, objective=build_objective, label=method_label,
              prepare=prepare, make_student=make_student, teacher_keys=TEACHER_KEYS,
              cell_keys=lambda method: CELL_KEYS, pairs=JACOBIAN_PAIRS)
