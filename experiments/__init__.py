"""The paper's experiments, each runnable as ``python -m experiments.<name>``.

Studies (each declares what is its own: its method table, labels, the paper's numbers,
gain pairs, the config keys that change its runs, and its report):

* :mod:`experiments.limited_data`: distillation with few examples per class (study 1);
* :mod:`experiments.noise_robustness`: study 1's students on noisy test inputs (study 2;
  it imports study 1 on purpose);
* :mod:`experiments.transfer`: Learning without Forgetting as distillation (study 3).

What they share, one concept per module (none imports a study):

* ``_cli``: the command line (absl + ``ml_collections.config_flags``), ``--help``;
* ``_study``: the driver of studies 1 and 3: checks, run identity, teacher, search, cells;
* ``_runtime``: host devices per CPU core, the mesh, the compilation cache, versions;
* ``_workdir``: the work directory's layout, its lock, atomic JSON, run configs;
* ``_data``: loading, class subsets, normalisation, few-shot subsets, augmented batches;
* ``_fit``: training and scoring one network (a cell or the teacher), models, optimizers;
* ``_sweep``: cells (method x size x seed) and the loop that runs them;
* ``_search``: loss weights chosen on validation before a sweep;
* ``_budget``: training steps that grow with the data;
* ``_probe``: a linear probe of a teacher's features and outputs on another task (study 3);
* ``_report`` / ``_plots``: results files, tables and paired gains / figures.

Configuration lives in ``experiments/configs/`` (one ``get_config(arg)`` file per config,
the command that runs it in its docstring; ``configs/_base`` is the light schema they
import: shared sub-configs, the loss terms' defaults, the words for every key,
validation). See ``docs/experiments.md``.
"""
