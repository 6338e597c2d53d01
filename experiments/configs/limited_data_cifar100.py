"""Study 1 at the paper's scale: CIFAR-100, VGG-9 teacher -> VGG-4 student.

Run on a GPU or TPU host with CIFAR-100 prepared for tfds (see docs/data.md):

    python -m experiments.limited_data --config=limited_data_cifar100 \
        --workdir runs/limited_data_cifar100 --config.data_dir=/data/tfds

The paper's numbers (Srinivas & Fleuret 2018) appear beside ours in results.md for the
methods that are its rows, at 10, 50 and all (500; 450 here, 10 % is validation)
examples per class. Fewer cells: --config.methods=ce,logits+ce,logits+jacobian+ce
--config.num_seeds=3. The noise study runs on the same work directory:

    python -m experiments.noise_robustness --config=limited_data_cifar100 \
        --workdir runs/limited_data_cifar100 --config.data_dir=/data/tfds

``:smoke`` keeps this config's networks, augmentation and optimiser at tiny sizes on
the offline digits resized to 16x16 (no CIFAR-100 needed): what the tests run.
"""

from ml_collections import ConfigDict

from experiments.configs import _base, limited_data_digits


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = limited_data_digits.get_config()
    c.dataset = "cifar100"
    c.augment = True              # random 32x32 crops of 4-padded images, and flips
    c.flip = True
    c.examples_per_class = (10, 50, "all")
    c.num_seeds = 5
    # VGG-9 / VGG-4 of jaxkd.models (the paper does not publish its layers).
    c.teacher = _base.model_spec("vgg9", width=64)
    c.teacher_train = _base.train_config(
        num_steps=40_000, batch_size=128, optimizer="sgd", learning_rate=0.05,
        weight_decay=5e-4, momentum=0.9, warmup_steps=1_000, num_evals=20,
        eval_batch_size=1000)
    c.student = _base.model_spec("vgg4", width=64)
    # The same number of updates at every data size (one compiled step per method).
    c.train = _base.train_config(
        num_steps=10_000, batch_size=128, optimizer="sgd", learning_rate=0.05,
        weight_decay=5e-4, momentum=0.9, warmup_steps=500, num_evals=20,
        eval_batch_size=1000)
    c.loss = _base.loss_config(logits=dict(weight=0.05))
    c.noise_sigmas = (0.0, 0.02, 0.05, 0.1, 0.2)
    c.run_progress = True
    c.tensorboard = True
    if mode == "smoke":
        _base.smoke(c)
        c.dataset = "digits"
        c.image_size = (16, 16)
        c.teacher.width = c.student.width = 4
        c.methods = ("logits+ce", "logits+jacobian+ce")
        c.examples_per_class = (10,)
        c.noise_sigmas = (0.0, 0.1)
    return c
