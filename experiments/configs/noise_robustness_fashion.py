"""Study 2 on Fashion-MNIST: which training form makes a student robust to input noise.

Beside study 1's students, trains at 10 examples per class the students of Proposition
1's family (``jacobian_raw``, ``jacobian_all``, ``vjp``, ``jvp``) and of noisy
distillation (``noisy``, ``noisy_kl``), each with its own weight or training sigma
chosen on validation, then evaluates them all under test-time noise, both readings. One
command, after study 1 (it reuses study 1's teacher):

    python -m experiments.noise_robustness --config=noise_robustness_fashion \
        --config.teacher_dir=runs/limited_data_fashion/teacher \
        --workdir runs/noise_robustness_fashion

The rows, their candidates and why: docs/experiments.md, "Real data on a CPU".
``:smoke`` trains one row with both new terms (all outputs' Jacobians and the noisy KL)
at study 1's smoke sizes, on the small IDX files the tests write under ``data_dir``.
"""

from ml_collections import ConfigDict

from experiments.configs import _base, limited_data_fashion


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = limited_data_fashion.get_config()
    c.examples_per_class = (10,)
    c.methods = ("ce", "kd+ce", "kd+jacobian+ce", "kd+jacobian_raw+ce", "kd+jacobian_all+ce",
                 "kd+vjp+ce", "kd+jvp+ce", "kd+noisy+ce", "kd+noisy_kl+ce")
    c.search = _base.search_config(
        sizes=(10,), seeds=3,
        kd=dict(weight=(0.3, 1.0, 3.0)),
        jacobian=dict(weight=(1.0, 3.0, 10.0)),
        jacobian_raw=dict(weight=(0.03, 0.1, 0.3)),
        jacobian_all=dict(weight=(0.01, 0.03, 0.1)),
        vjp=dict(weight=(0.01, 0.03, 0.1)), jvp=dict(weight=(0.01, 0.03, 0.1)),
        noisy=dict(sigma=(0.15, 0.3, 0.6)), noisy_kl=dict(sigma=(0.15, 0.3, 0.6)))
    c.noise_examples_per_class = (10,)
    c.noise_both_readings = True
    if mode == "smoke":
        limited = limited_data_fashion.get_config("smoke")
        for key in ("validation_fraction", "train_epochs", "train_max_steps", "teacher",
                    "student", "train", "teacher_train", "num_seeds", "num_devices",
                    "compilation_cache", "noise_sigmas", "noise_draws",
                    "noise_gradient_examples"):
            c[key] = limited[key]
        c.examples_per_class = c.noise_examples_per_class = (2,)
        # One row with both new terms: one compiled step (the suite runs this command).
        c.methods = ("kd+jacobian_all+noisy_kl+ce",)
        c.search = _base.search_config(sizes=(2,), seeds=1, jacobian_all=dict(weight=(0.01,)),
                                       noisy_kl=dict(sigma=(0.3,)))
    return c
