"""jaxkd.losses: the loss functions, as pure functions returning per-example values.

Output-space losses take logits; Jacobian losses take the networks as pure functions
``fn(x) -> [B, K]`` (examples independent, inference mode) and the input batch ``x``.
The teacher is always a constant target. Every function returns ``[batch_size]``.

:func:`teacher_targets` computes the teacher's part of the Jacobian losses once, as a
:class:`TeacherTargets` pytree that they accept in ``teacher_fn``'s place.
"""

from jaxkd.losses._attention import attention_jacobian_loss
from jaxkd.losses._common import DISTRIBUTIONS
from jaxkd.losses._common import attention_map
from jaxkd.losses._common import sample_probes
from jaxkd.losses._attention import attention_transfer_loss
from jaxkd.losses._distillation import distillation_loss
from jaxkd.losses._distillation import logit_matching_loss
from jaxkd.losses._finite_difference import DEFAULT_STEPS
from jaxkd.losses._finite_difference import finite_difference_loss
from jaxkd.losses._jacobian import OUTPUT_MODES
from jaxkd.losses._jacobian import jacobian_matching_loss
from jaxkd.losses._noise import CURVATURE_METHODS
from jaxkd.losses._noise import NOISE_KINDS
from jaxkd.losses._noise import cross_entropy_noise_expansion
from jaxkd.losses._noise import noisy_distillation_loss
from jaxkd.losses._noise import squared_noise_expansion
from jaxkd.losses._noise import weighted_laplacian
from jaxkd.losses._projection import jvp_projection_loss
from jaxkd.losses._projection import vjp_projection_loss
from jaxkd.losses._targets import PROJECTIONS
from jaxkd.losses._targets import TeacherTargets
from jaxkd.losses._targets import teacher_targets

__all__ = [
    "CURVATURE_METHODS",
    "DEFAULT_STEPS",
    "DISTRIBUTIONS",
    "NOISE_KINDS",
    "OUTPUT_MODES",
    "PROJECTIONS",
    "TeacherTargets",
    "attention_jacobian_loss",
    "attention_map",
    "attention_transfer_loss",
    "cross_entropy_noise_expansion",
    "distillation_loss",
    "finite_difference_loss",
    "jacobian_matching_loss",
    "jvp_projection_loss",
    "logit_matching_loss",
    "noisy_distillation_loss",
    "sample_probes",
    "squared_noise_expansion",
    "teacher_targets",
    "vjp_projection_loss",
    "weighted_laplacian",
]
