"""Study 1's low-data reading with a second teacher-student pair: a wide ResNet teacher.

The same Fashion-MNIST protocol as ``limited_data_fashion`` (budgets, per-seed
validation, the weight search with growing grids, report seeds apart from the search's),
with a teacher of another family: WRN-16-1 (width 16, residual blocks with BatchNorm)
instead of VGG-9, and the same VGG-4 student. Whether a Jacobian term's gain at 10 and 50
per class belongs to the method or to one pair is read from the two folders side by
side. Run, on a 2-core CPU, one size per work directory, so the weights are chosen at the
size where they are used (10 report seeds from 100, apart from the search's 0-2):

    python -m experiments.limited_data --config=limited_data_fashion_wrn \
        --workdir runs/limited_data_fashion_wrn_n10

and the same with ``--config.examples_per_class=50 --config.search.sizes=50`` in its
own work directory.

``:smoke`` is ``limited_data_fashion:smoke`` with a width-4 WRN-10-1 teacher and one row.
"""

from ml_collections import ConfigDict

from experiments.configs import _base, limited_data_fashion


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = limited_data_fashion.get_config(mode)
    c.teacher = _base.model_spec("wrn", width=16, depth=16, widen_factor=1)
    c.examples_per_class = (10,)
    c.first_seed, c.num_seeds = 100, 10
    c.noise_examples_per_class = ()  # study 2 is not run on this pair
    # The paper's activation-matching pair and the KD pair, each with and without the
    # exact Jacobian term; CE for reference.
    c.methods = ("ce", "logits+ce", "logits+jacobian+ce", "kd+ce", "kd+jacobian+ce")
    if mode == "smoke":
        c.teacher = _base.model_spec("wrn", width=4, depth=10, widen_factor=1)
        c.examples_per_class, c.num_seeds = (2,), 1
        c.methods = ("kd+jacobian+ce",)  # one compiled step: the suite runs this command
        c.search.jacobian.weight = (10.0,)
    return c
