"""Study 2 on Fashion-MNIST: which training form makes a student robust to input noise.

Beside study 1's students (``limited_data_fashion``), study 2 trains at 10 examples per
class (where study 1's claim lives) the students of Proposition 1's family and of noisy
distillation, each with its own weight or training sigma chosen on validation like every
method of study 1, and evaluates them all under test-time noise. Run after study 1
(it reuses study 1's teacher):

    python -m experiments.limited_data --config=noise_robustness_fashion \
        --config.teacher_dir=runs/limited_data_fashion/teacher \
        --workdir runs/noise_robustness_fashion
    python -m experiments.noise_robustness --config=noise_robustness_fashion \
        --config.teacher_dir=runs/limited_data_fashion/teacher \
        --workdir runs/noise_robustness_fashion

The rows, all with Hinton KD (tau = 4) and cross-entropy, at the KD weight ``kd+ce``
chose:

* ``ce``, ``kd+ce``: the baselines;
* ``kd+jacobian+ce``: study 1's normalised top-1 Jacobian matching (weight 1, 3 or 10);
* ``kd+jacobian_raw+ce``, ``kd+jacobian_all+ce``: Proposition 1's own term, the
  unnormalised ``||J_T - J_S||^2``, of the teacher's top-1 output (weight 0.03, 0.1 or
  0.3) and of all ten outputs (0.01, 0.03 or 0.1: the scale of the VJP and JVP rows,
  which estimate the same all-output quantity with one random probe);
* ``kd+vjp+ce``, ``kd+jvp+ce``: those one-probe estimates (0.01, 0.03 or 0.1);
* ``kd+noisy+ce``: Proposition 1's left-hand side, the squared error of the logits on
  Gaussian-noised inputs (weight 0.1), training sigma 0.15, 0.3 or 0.6 in normalised
  units (Fashion-MNIST's pixel std is 0.353: about 0.05, 0.1 or 0.2 in pixels);
* ``kd+noisy_kl+ce``: Hinton's soft KL on noised inputs (weight 1, tau 4), the same
  three training sigmas.

Every method chooses among three candidates, averaged over seeds 0-2 (``_search``); the
cells are the search's runs (10 per class, 3 seeds), so ``limited_data`` trains nothing
else. The first five rows are study 1's own cells at 10 per class, retrained here with
the same seeds and choices (the same numbers on one machine).

Study 2 then evaluates every student (and the teacher) under N(0, sigma^2) pixel noise,
sigma in {0, 0.025, 0.05, 0.1, 0.2}, 5 draws per seed shared by all methods, clipped to
[0, 1] (as an image a user meets) with the unclipped reading reported beside it, and
measures each student's input-gradient norm, its cosine with the teacher's gradient and
the drift of its mean logits under noise.

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
