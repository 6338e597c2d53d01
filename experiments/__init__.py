"""The paper's experiments, each runnable as ``python -m experiments.<name>``.

Studies, each a :class:`_plan.Study` of the driver (none imports another):

* :mod:`experiments.limited_data`: distillation with few examples per class (study 1);
* :mod:`experiments.noise_robustness`: study 1's students on noisy test inputs (study 2);
* :mod:`experiments.transfer`: Learning without Forgetting as distillation (study 3).

What they share, one concept per module: ``_cli`` the command line; ``_plan`` a study's
declaration, its runs' identity and checks; ``_study`` the driver; ``_methods`` the
method table of studies 1 and 2; ``_noise`` study 2's measures; ``_runtime`` devices,
mesh, caches; ``_workdir`` the work directory and its lock; ``_runs`` the cells and runs
in it, their records and the loop over them; ``_data`` the data; ``_fit`` one network's
training; ``_search`` the weight search; ``_budget`` the growing budget; ``_targets``
the teacher's shared targets; ``_probe`` study 3's linear probe; ``_report`` /
``_plots`` results files and figures. ``configs/``: one ``get_config(arg)`` file per
config, over ``configs/_base`` (the schema and the words) and ``configs/_checks``.
See ``docs/experiments.md``.
"""
