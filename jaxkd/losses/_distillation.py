"""Output-space distillation losses: Hinton KD and logit matching."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks, _common


def distillation_loss(student_logits: jax.typing.ArrayLike,
                      teacher_logits: jax.typing.ArrayLike,
                      *,
                      temperature: jax.typing.ArrayLike = 1.0) -> jax.Array:
    r"""Hinton knowledge distillation, per example.

    The KL divergence from the teacher's softened distribution to the student's,
    scaled by ``temperature**2`` so that gradient magnitudes do not shrink as the
    temperature grows (Hinton et al., 2015). The teacher is a constant target: its
    logits receive no gradient.

    .. math::
        \tau^2 \, \mathrm{KL}\big(\mathrm{softmax}(t/\tau) \,\|\, \mathrm{softmax}(s/\tau)\big)

    Masked classes: a ``-inf`` teacher logit is a class of teacher probability 0 at every
    temperature (``-inf / tau = -inf``), and adds nothing (``0 log 0 = 0``): the loss is
    the KL over the classes the teacher allows, finite, as ``optax.losses.kl_divergence``
    computes it, and its gradient pushes the student's mass off the masked class. A
    ``-inf`` *student* logit where the teacher allows the class gives ``+inf``, the
    honest KL of a student that rules out a class the teacher does not; where both mask
    the class it adds nothing. A row whose teacher logits are all ``-inf`` is no
    distribution: NaN.

    Args:
      student_logits: ``[batch_size, num_classes]`` student logits.
      teacher_logits: ``[batch_size, num_classes]`` teacher logits (``-inf``: a masked
        class).
      temperature: softening temperature ``tau > 0``, finite.

    Returns:
      ``[batch_size]`` non-negative losses; zero where the two distributions agree.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import distillation_loss
      >>> s = jnp.array([[0.0, 0.0]])
      >>> t = jnp.array([[0.0, 2.0]])
      >>> print(distillation_loss(s, t, temperature=1.0).round(4))
      [0.3278]
      >>> masked = jnp.array([[0.0, 2.0, -jnp.inf]])  # class 2 ruled out by the teacher
      >>> print(distillation_loss(jnp.array([[0.0, 0.0, 0.0]]), masked).round(4))
      [0.7333]

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    _checks.check_logit_pair(student_logits, teacher_logits)
    _checks.check_positive("temperature", temperature)
    # bfloat16 logits are upcast: the softmax and the KL sum are computed in float32.
    student_logits = _checks.widen(jnp.asarray(student_logits))
    teacher_logits = _checks.widen(jnp.asarray(teacher_logits))
    return _common.softened_kl(student_logits, teacher_logits, temperature)


def logit_matching_loss(student_logits: jax.typing.ArrayLike,
                        teacher_logits: jax.typing.ArrayLike) -> jax.Array:
    r"""Squared error between logits ("match activations"), per example.

    The first term of Proposition 1 of Srinivas & Fleuret (2018); the teacher's
    logits are a constant target.

    .. math::
        \sum_i (t_i - s_i)^2

    Args:
      student_logits: ``[batch_size, num_classes]`` student logits.
      teacher_logits: ``[batch_size, num_classes]`` teacher logits.

    Returns:
      ``[batch_size]`` squared distances.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import logit_matching_loss
      >>> print(logit_matching_loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]])))
      [5.]
    """
    _checks.check_logit_pair(student_logits, teacher_logits)
    diff = (jax.lax.stop_gradient(_checks.widen(jnp.asarray(teacher_logits)))
            - _checks.widen(jnp.asarray(student_logits)))
    return jnp.sum(jnp.square(diff), axis=-1)
