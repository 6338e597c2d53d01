"""Study 3, transfer learning (LwF as distillation), on the offline digits (the default).

Run (its wall time is in docs/experiments.md):

    python -m experiments.transfer --workdir runs/transfer

Source task: digits 0-4 (a VGG-9 teacher of width 8, trained once on all their training
images and cached in <workdir>/teacher). Target task: digits 5-9 with 5, 10 or all
(~130) training images per class, learnt by a SmallCNN student (a different
architecture) with a 5 + 5 output head. Attention is matched on the taps block1 (8x8)
and block2 (4x4), which both networks have at equal sizes. ``:smoke`` runs every loss
term in seconds, with a small SmallCNN teacher (the tests).
"""

from ml_collections import ConfigDict

from experiments.configs import _base


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = ConfigDict()
    # Source and target tasks (class lists; () = all classes of the dataset).
    c.source_dataset = "digits"
    c.source_classes = (0, 1, 2, 3, 4)
    c.target_dataset = "digits"
    c.target_classes = (5, 6, 7, 8, 9)
    c.data_dir = ""
    c.image_size = ()
    c.validation_fraction = 0.1
    c.augment = False
    c.flip = False
    # The sweep.
    c.examples_per_class = (5, 10, "all")
    c.num_seeds = 5
    c.methods = ("no_transfer", "finetune", "lwf", "lwf+jacobian", "lwf+attention",
                 "lwf+attention+attention_jacobian")
    # Networks. 24 fits the 25 images of the 5-per-class set and divides by 1-8 devices.
    c.teacher = _base.model_spec("vgg9", width=8)
    c.teacher_train = _base.train_config(num_steps=600, batch_size=64, learning_rate=3e-3)
    c.teacher_seed = 0
    c.student = _base.model_spec("small_cnn", width=16, hidden=(64,))
    c.student_tap_aliases = ""
    c.train = _base.train_config(num_steps=300, batch_size=24, learning_rate=3e-3)
    c.finetune_train = _base.train_config(num_steps=300, batch_size=24, learning_rate=3e-3)
    c.loss = _base.loss_config(attention=dict(layers=("block1", "block2")),
                               attention_jacobian=dict(layer="block2"))  # LwF: tau = 2
    c.search = _base.search_config()  # off: the loss weights as set
    c.paper_table = ""
    _base.execution(c)
    if mode == "smoke":
        _base.smoke(c)
        c.examples_per_class = (5,)
        # Every loss term: CE only, the oracle, LwF + Jacobians, LwF + both attentions.
        c.methods = ("no_transfer", "finetune", "lwf+jacobian",
                     "lwf+attention+attention_jacobian")
        c.teacher = _base.model_spec("small_cnn", width=4, hidden=(8,))
        c.student = _base.model_spec("small_cnn", width=4, hidden=(8,))
    return c
