"""Study 3 at the paper's scale: a pretrained teacher -> VGG-9 on MIT Indoor 67 (a folder).

The paper transfers an ImageNet ResNet to a VGG-9 on MIT Indoor Scenes (67 classes). Here
the source is downsampled ImageNet from tfds (``imagenet_resized/32x32``, prepared as in
docs/data.md), the teacher a ResNet-18; the target an image folder, resized to 32x32:

    python -m experiments.transfer --config=transfer_folder --workdir runs/mit_indoor \
        --config.data_dir=/data/tfds \
        --config.target_dataset=folder:/data/indoorCVPR_09/Images

The teacher is trained once on the source and cached in <workdir>/teacher; to reuse a
teacher (a "pretrained checkpoint"), point --config.teacher_dir at the teacher/ directory
of an earlier run (docs/experiments.md says how to produce one). Larger images:
--config.source_dataset=imagenet_resized/64x64 --config.image_size=64,64 (about 65 GB of
host memory for the source as float32). ``:smoke`` keeps the ResNet-18 -> VGG-9 pair and
its tap aliases at width 4 on the offline digits (0-4 -> 5-9, resized to 16x16).
"""

from ml_collections import ConfigDict

from experiments.configs import _base, transfer_digits


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = transfer_digits.get_config()
    c.source_dataset = "imagenet_resized/32x32"
    c.source_classes = ()         # all 1000
    c.target_dataset = "folder:/data/indoorCVPR_09/Images"
    c.target_classes = ()         # all 67
    c.image_size = (32, 32)
    c.augment = True
    c.flip = True
    c.examples_per_class = (25, 50, "all")
    c.num_seeds = 5
    c.teacher = _base.model_spec("resnet18", width=64, stem="cifar")
    c.teacher_train = _base.train_config(
        num_steps=200_000, batch_size=256, optimizer="sgd", learning_rate=0.1,
        weight_decay=1e-4, momentum=0.9, warmup_steps=2_000, num_evals=20,
        eval_batch_size=1000)
    c.student = _base.model_spec("vgg9", width=64)
    # VGG-9 taps block1..4 have the sizes of ResNet-18's stage1..4 (32, 16, 8, 4).
    c.student_tap_aliases = "block1:stage1,block2:stage2,block3:stage3,block4:stage4"
    c.train = _base.train_config(
        num_steps=5_000, batch_size=64, optimizer="sgd", learning_rate=0.02,
        weight_decay=5e-4, momentum=0.9, warmup_steps=250, num_evals=20)
    c.finetune_train = _base.train_config(
        num_steps=5_000, batch_size=64, optimizer="sgd", learning_rate=0.005,
        weight_decay=5e-4, momentum=0.9, warmup_steps=250, num_evals=20)
    c.loss = _base.loss_config(attention=dict(layers=("stage2", "stage3", "stage4")),
                               attention_jacobian=dict(layer="stage4"))
    c.paper_table = "mit_indoor"
    c.run_progress = True
    c.tensorboard = True
    if mode == "smoke":
        _base.smoke(c)
        c.source_dataset = c.target_dataset = "digits"
        c.source_classes, c.target_classes = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
        c.image_size = (16, 16)
        c.examples_per_class = (5,)
        c.methods = ("lwf+attention+attention_jacobian",)
        c.teacher.width = c.student.width = 4
    return c
