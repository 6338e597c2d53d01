"""Study 1, distillation with limited data, on the offline digits (the default).

Run (the README's first command; about 5-10 minutes on a 2-core CPU):

    python -m experiments.limited_data --workdir runs/limited_data

A SmallCNN teacher (~98 % test accuracy) is trained once on all 1,295 training digits
and cached in the work directory; then a one-hidden-layer MLP student is trained for
every method x examples per class x seed, each for the same 300 AdamW steps of 40
images (a fixed budget whatever the subset size, so all cells share one compiled step).
See docs/experiments.md for why each value is what it is.
"""

from ml_collections import ConfigDict

from experiments._common import loss_config, model_spec, train_config


def get_config() -> ConfigDict:
    c = ConfigDict()
    # Data: 8x8x1 digits, 10 classes; 10 % of the training split is validation.
    c.dataset = "digits"
    c.data_dir = ""               # tfds data directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.image_size = ()             # (height, width) to resize to; () keeps the native size
    c.validation_fraction = 0.1
    c.augment = False             # random crops (+ flips) of the training batches
    c.flip = False                # digits are not mirror-symmetric
    # The sweep: methods x examples per class x seeds.
    c.examples_per_class = (5, 10, 50, "all")
    c.num_seeds = 5
    c.methods = (
        "ce",                     # cross-entropy only
        "kd+ce",                  # Hinton KD + CE
        "logits+ce",              # match activations (squared logit error) + CE
        "logits+jacobian+ce",     # ... + exact Jacobian matching (teacher top-1, normalised)
        "kd+jacobian+ce",         # KD + exact Jacobian matching + CE
        "kd+vjp+ce",              # KD + ||J_T - J_S||_F^2 by one output-space probe + CE
        "kd+jvp+ce",              # KD + the same by one input-space (forward-mode) probe + CE
        "noisy+ce",               # Monte Carlo noisy logit matching + CE (Proposition 1)
        "logits",                 # the paper's "without CE" rows
        "logits+jacobian",
    )
    # Networks.
    c.teacher = model_spec("small_cnn", width=16, hidden=(64,))
    c.teacher_train = train_config(num_steps=1500, batch_size=64, learning_rate=3e-3,
                                   num_evals=5)
    c.teacher_seed = 0
    c.student = model_spec("mlp", hidden=(64,))
    c.train = train_config(num_steps=300, batch_size=40, learning_rate=3e-3, num_evals=5)
    c.loss = loss_config()
    # Noise robustness (study 2 reads these; study 1 ignores them).
    c.noise_sigmas = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    c.noise_examples_per_class = ()  # () = every size of the sweep
    # Execution.
    c.num_devices = 0             # data-parallel devices (0 = all)
    c.compilation_cache = True    # <workdir>/jax_cache: compile each method once
    c.run_progress = False        # a progress bar per cell too (besides the sweep's)
    c.tensorboard = False
    return c
