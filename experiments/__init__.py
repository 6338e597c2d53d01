"""The paper's experiments, each runnable as ``python -m experiments.<name>``.

* :mod:`experiments.limited_data`: distillation with few examples per class (study 1);
* :mod:`experiments.noise_robustness`: study 1's students on noisy test inputs (study 2);
* :mod:`experiments.transfer`: Learning without Forgetting as distillation (study 3).

Configuration lives in ``experiments/configs/`` (one ``get_config()`` file per config,
the command that runs it in its docstring). See ``docs/experiments.md``.
"""
