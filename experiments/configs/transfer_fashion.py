"""Study 3 on real images: Fashion-MNIST classes 0-4 -> classes 5-9, VGG-9 -> VGG-4, CPU.

Needs Fashion-MNIST's IDX files (``apt-get install dataset-fashion-mnist``; docs/data.md).
Run, on a 2-core CPU:

    python -m experiments.transfer --config=transfer_fashion --workdir runs/transfer_fashion

Committed results, wall times and the machine: results/fashion_mnist/ (README there).

As the paper's ImageNet -> MIT Scenes in miniature: the teacher (VGG-9, width 16) learns
the *source* task, T-shirt, trouser, pullover, dress and coat (classes 0-4, all their
~28,500 training images); the student, a different and smaller architecture (VGG-4,
width 16), learns the disjoint *target* task, sandal, shirt, sneaker, bag and ankle
boot (classes 5-9), from 10, 50 or all (~5,700) examples per class, with a 5 + 5
output head whose old-task half mimics the teacher on the target images (LwF).
Attention is matched on the taps block2 (14x14) and block3 (7x7), which both networks
have at equal sizes, and the attention Jacobian on block3. The fine-tuning oracle is
the teacher's architecture started from the teacher (all but the classifier).

Budget (``_budget``): ``clip(ceil(15 epochs * N / 48), 100, 200)`` steps of 48 images
(the 10-per-class set has 50) per cell: 100 at 10 and 50 per class (96 and 19 epochs),
200 on all the data (0.36 epoch: the cap is what 2 loaded cores afforded in about half
an hour for 6 methods x 3 seeds; the measured wall time is in results/fashion_mnist/).
The teacher: 1,000 steps of 128 on the source task (4.7 epochs). The loss arguments
are ``_base.loss_config``'s (LwF temperature 2), except every method's own weights, which
a search chooses on validation before the sweep (``search``, ``experiments/_search.py``:
at 10 examples per class, mean over seeds 0-2; three candidates each: LwF 0.3, 1 or 3,
Jacobian 1, 3 or 10, attention 1, 10 or 100, attention Jacobian 0.1, 1 or 10). A method
that adds a term keeps the choice of the method it adds to (``lwf+jacobian`` and
``lwf+attention`` keep ``lwf``'s weight, ``lwf+attention+attention_jacobian`` keeps
``lwf+attention``'s two) and chooses among its own three. The search runs the bases
first and trains each added term's candidates at the base's choice only: 4 methods x
3 candidates x 3 seeds = 36 runs of 100 steps (the product would be 144). The first
committed run used a fixed Jacobian weight 10, which this study's own validation split
did not prefer.

``:smoke`` runs every loss term at tiny sizes (width-4 networks, 12 steps, one seed) on
the small IDX files the tests write under ``data_dir``.
"""

from ml_collections import ConfigDict

from experiments.configs import _base, transfer_digits


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = transfer_digits.get_config()  # its classes (0-4 -> 5-9), methods and loss terms
    c.source_dataset = "fashion_mnist"
    c.target_dataset = "fashion_mnist"
    c.validation_fraction = 0.05
    c.augment = True
    c.flip = True
    c.examples_per_class = (10, 50, "all")
    c.num_seeds = 3
    c.teacher = _base.model_spec("vgg9", width=16)
    c.teacher_train = _base.train_config(num_steps=1000, batch_size=128, learning_rate=3e-3,
                                         num_evals=4)
    c.student = _base.model_spec("vgg4", width=16)
    c.student_tap_aliases = ""    # VGG-9 and VGG-4 share the tap names block1..3
    # 48: the 10-per-class target set has 50 images.
    c.train = _base.train_config(num_steps=100, batch_size=48, learning_rate=3e-3,
                                 num_evals=3)
    c.finetune_train = _base.train_config(num_steps=100, batch_size=48, learning_rate=1e-3,
                                          num_evals=3)
    c.train_epochs = 15.0
    c.train_max_steps = 200
    c.loss = _base.loss_config(attention=dict(layers=("block2", "block3")),
                               attention_jacobian=dict(layer="block3"))
    # The added terms' weights are chosen on validation (``experiments/_search.py``).
    # Every method's own weights, three candidates each, at the scarcest size, averaged
    # over 3 seeds; LwF's own distillation weight too. A method that adds a term keeps the
    # choice of the method it adds to (lwf+jacobian: lwf's LwF weight).
    c.search = _base.search_config(
        sizes=(10,), seeds=3,
        lwf=dict(weight=(0.3, 1.0, 3.0)),
        jacobian=dict(weight=(1.0, 3.0, 10.0)), attention=dict(weight=(1.0, 10.0, 100.0)),
        attention_jacobian=dict(weight=(0.1, 1.0, 10.0)))
    if mode == "smoke":
        _base.smoke(c)
        c.validation_fraction = 0.2
        c.examples_per_class = (2,)
        c.methods = ("no_transfer", "finetune", "lwf+jacobian",
                     "lwf+attention+attention_jacobian")
        c.teacher.width = c.student.width = 4
        c.train_epochs = 2.0
        c.train_max_steps = 14
        c.search.sizes = (2,)     # one candidate each: the search's runs are the cells
        c.search.seeds = 1
        c.search.lwf.weight = ()
        c.search.jacobian.weight = (10.0,)
        c.search.attention.weight = (10.0,)
        c.search.attention_jacobian.weight = (1.0,)
    return c
