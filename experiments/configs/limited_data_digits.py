"""Study 1, distillation with limited data, on the offline digits (the default).

Run (the README's first command; its wall time is in docs/experiments.md):

    python -m experiments.limited_data --workdir runs/limited_data

A SmallCNN teacher (~98 % test accuracy) is trained once on all 1,295 training digits
and cached in the work directory; then a one-hidden-layer MLP student is trained for
every method x examples per class x seed, each for the same 300 AdamW steps of 40
images (a fixed budget whatever the subset size, so all cells share one compiled step).
``--config=limited_data_digits:smoke`` runs the whole pipeline in seconds (the tests).
See docs/experiments.md for why each value is what it is.
"""

from ml_collections import ConfigDict

from experiments.configs import _base


def get_config(arg: str | None = None) -> ConfigDict:
    mode = _base.mode(arg)
    c = ConfigDict()
    # Data: 8x8x1 digits, 10 classes; 10 % of the training split is validation.
    c.dataset = "digits"
    c.data_dir = ""
    c.image_size = ()
    c.validation_fraction = 0.1
    c.augment = False
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
    # Networks. 40 and 64 divide by 1, 2, 4 and 8 devices.
    c.teacher = _base.model_spec("small_cnn", width=16, hidden=(64,))
    c.teacher_train = _base.train_config(num_steps=1500, batch_size=64, learning_rate=3e-3,
                                         num_evals=5)
    c.teacher_seed = 0
    c.student = _base.model_spec("mlp", hidden=(64,))
    c.train = _base.train_config(num_steps=300, batch_size=40, learning_rate=3e-3,
                                 num_evals=5)
    c.loss = _base.loss_config()
    c.search = _base.search_config()  # off: the loss weights as set
    # Noise robustness (study 2 reads these; study 1 ignores them): noisy pixels clipped
    # to [0, 1] (noise_clip), 5 draws per seed (noise_draws), input gradients on the
    # first 1,000 test images (noise_gradient_examples; the digits have 359).
    _base.noise(c, sigmas=(0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))
    _base.execution(c)
    if mode == "smoke":
        _base.smoke(c)
        c.methods = ("logits+ce", "logits+jacobian+ce")
        c.examples_per_class = (5, "all")
        c.noise_sigmas = (0.0, 0.5)
    return c
