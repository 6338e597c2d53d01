r"""Distillation under Gaussian input noise, and its second-order expansions.

For a smooth per-example loss ``l(x)`` and noise ``xi ~ N(0, sigma^2 I_D)``, Taylor's
theorem with the Gaussian moments ``E[xi] = 0``, ``E[xi xi^T] = sigma^2 I`` and vanishing
odd moments gives

    E_xi[l(x + xi)] = l(x) + (sigma^2 / 2) * Laplacian(l)(x) + O(sigma^4).        (*)

**Squared error** (Srinivas & Fleuret 2018, Proposition 1). With ``d = T - S`` and
``l = ||d||^2``, ``Laplacian(l) = 2 ||J_d||_F^2 + 2 sum_i d_i Laplacian(d_i)``, so

    E||d(x+xi)||^2 = ||d||^2 + sigma^2 (||J_T - J_S||_F^2 + sum_i d_i Laplacian(d_i)) + O(sigma^4).

The paper prints the first two terms (it linearises T and S); the Laplacian term vanishes
for affine networks, almost everywhere for ReLU networks, and where the outputs agree.

**Cross-entropy.** With probabilities ``t = softmax(T/tau)``, ``s = softmax(S/tau)`` and
``l = -sum_i t_i log s_i``, the product rule and
``Laplacian(log s_i) = Laplacian(s_i)/s_i - ||grad s_i||^2 / s_i^2`` give

    Laplacian(l) / 2 = - sum_i (grad t_i . grad s_i) / s_i                      [poster term]
                       + sum_i t_i ||grad s_i||^2 / (2 s_i^2)                  [log curvature]
                       - (1/2) sum_i (log s_i Laplacian(t_i) + (t_i / s_i) Laplacian(s_i)),

so ``E[l(x+xi)] = l(x) + sigma^2 * Laplacian(l)(x) / 2 + O(sigma^4)``. The first line is the
poster's ``-sigma^2 (grad T_s . grad S_s) / S_s``; the second is what expanding the log to
second order adds when T_s and S_s are linearised; the third vanishes when the
probabilities themselves are affine in x, which the softmax never is exactly.

Laplacians are computed exactly (D forward-over-reverse Hessian-vector products) or by
Hutchinson's estimator ``E_u[u^T H u] = tr H`` with Rademacher probes (one
forward-over-reverse product per probe). Because examples are independent, the Hessian of
a batch-summed scalar is block-diagonal and one product serves the whole batch.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks, _common, _contract, _targets

Fn = Callable[[jax.Array], jax.Array]

NoiseKind = Literal["squared", "cross_entropy", "kl"]
Curvature = Literal["exact", "hutchinson", "none"]
LaplacianMethod = Literal["exact", "hutchinson"]
NOISE_KINDS: tuple[str, ...] = typing.get_args(NoiseKind)
CURVATURE_METHODS: tuple[str, ...] = typing.get_args(Curvature)
LAPLACIAN_METHODS: tuple[str, ...] = typing.get_args(LaplacianMethod)


def noisy_distillation_loss(student_fn: Fn,
                            teacher_fn: Fn,
                            x: jax.typing.ArrayLike,
                            *,
                            key: jax.Array,
                            sigma: float,
                            num_samples: int = 1,
                            kind: NoiseKind = "squared",
                            temperature: float = 1.0) -> jax.Array:
    r"""Monte Carlo distillation under Gaussian input noise, per example.

    .. math::
        \frac{1}{n} \sum_{j=1}^{n} \ell\big(T(x + \xi_j), S(x + \xi_j)\big),
        \qquad \xi_j \sim \mathcal{N}(0, \sigma^2 I)

    with ``l`` the squared error of the outputs (``kind="squared"``, the setting of
    Proposition 1), the cross-entropy ``-sum_i softmax(t/tau)_i log softmax(s/tau)_i``
    (``kind="cross_entropy"``), or Hinton's ``tau^2 KL`` (``kind="kl"``, as
    :func:`distillation_loss`). All ``n`` noisy copies go through each network as one
    batch of ``n * B`` examples. The teacher is a constant target.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent (not
        :class:`TeacherTargets`: this loss needs the teacher itself).
      x: ``[batch_size, ...]`` floating inputs.
      key: a ``jax.random.key`` for the noise.
      sigma: noise standard deviation ``> 0``.
      num_samples: noise samples per example ``n >= 1``.
      kind: ``"squared"``, ``"cross_entropy"`` or ``"kl"``.
      temperature: softmax temperature for ``"cross_entropy"`` and ``"kl"``.

    Returns:
      ``[batch_size]`` Monte Carlo estimates of ``E_xi[l(x + xi)]``; see
      :func:`squared_noise_expansion` and :func:`cross_entropy_noise_expansion` for their
      second-order expansions in ``sigma``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkd.losses import noisy_distillation_loss
      >>> f = lambda x: jnp.tanh(x)
      >>> loss = noisy_distillation_loss(f, f, jnp.ones((2, 3)), key=jax.random.key(0), sigma=0.1)
      >>> print(loss)
      [0. 0.]
    """
    if isinstance(teacher_fn, _targets.TeacherTargets):
        raise _targets.refuse("noisy_distillation_loss", "teacher_fn",
                              "it evaluates the teacher at noisy copies x + xi of the batch, "
                              "drawn afresh from `key` on every call, and targets computed at "
                              "x cannot stand in for them.")
    x = _checks.check_network_loss(x, {"student_fn": student_fn, "teacher_fn": teacher_fn},
                                   key=key)
    _checks.check_finite_positive("sigma", sigma)
    _checks.check_count("num_samples", num_samples)
    _checks.check_choice("kind", kind, NOISE_KINDS)
    _checks.check_positive("temperature", temperature)
    batch = x.shape[0]
    # Example-major layout [B, n, ...] -> [B * n, ...]: merging the batch axis with the
    # sample axis behind it keeps a batch-sharded x sharded the same way.
    noise = sigma * jax.random.normal(key, (batch, num_samples) + x.shape[1:], dtype=x.dtype)
    noisy = (x[:, None] + noise).reshape((batch * num_samples,) + x.shape[1:])
    teacher_out = jax.lax.stop_gradient(teacher_fn(noisy))
    student_out = student_fn(noisy)
    _checks.check_network_outputs(noisy, student_out, teacher_out)
    teacher_out, student_out = _checks.widen(teacher_out), _checks.widen(student_out)
    if kind == "squared":
        per_sample = jnp.sum(jnp.square(teacher_out - student_out), axis=-1)
    elif kind == "kl":
        per_sample = _common.softened_kl(student_out, teacher_out, temperature)
    else:
        per_sample = _common.soft_cross_entropy(student_out, teacher_out, temperature)
    return jnp.mean(per_sample.reshape(batch, num_samples), axis=1)


def weighted_laplacian(fn: Fn,
                       x: jax.Array,
                       weights: jax.Array,
                       *,
                       method: LaplacianMethod = "exact",
                       key: jax.Array | None = None,
                       num_probes: int = 1) -> jax.Array:
    """Per example ``sum_i w_i * Laplacian_x(fn_i)(x)``, the trace of one Hessian.

    ``sum_i w_i Laplacian(fn_i) = tr(Hessian of y -> w . fn(y))`` with ``w`` held constant
    in ``y`` (it may still depend on parameters, and gradients flow through it).

    Args:
      fn: pure ``[B, ...] -> [B, K]`` function, examples independent.
      x: ``[B, ...]`` inputs.
      weights: ``[B, K]`` weights.
      method: ``"exact"`` (D Hessian-vector products) or ``"hutchinson"``.
      key: a ``jax.random.key``; required for ``"hutchinson"``.
      num_probes: Rademacher probes for ``"hutchinson"``.

    Returns:
      ``[B]`` values (unbiased estimates for ``"hutchinson"``).
    """
    _checks.check_choice("method", method, LAPLACIAN_METHODS)
    batch, dim = x.shape[0], math.prod(x.shape[1:])

    def scalar(y):
        return jnp.sum(weights * _checks.widen(fn(y)))

    def quadratic_form(u):  # u^T H u for every example at once: H is block-diagonal.
        _, hu = jax.jvp(jax.grad(scalar), (x,), (u,))
        return jnp.sum((u * hu).reshape(batch, -1), axis=-1)

    if method == "exact":
        basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
        return jnp.sum(jax.vmap(quadratic_form)(_common.like(basis, x)), axis=0)
    _checks.check_key("key", key)
    assert key is not None  # check_key raised otherwise
    _checks.check_count("num_probes", num_probes)
    u = _common.like(jax.random.rademacher(key, (num_probes,) + x.shape, dtype=x.dtype), x)
    return jnp.mean(jax.vmap(quadratic_form)(u), axis=0)


def _check_expansion_args(student_fn: Fn, teacher_fn: Fn | _targets.TeacherTargets,
                          x: jax.typing.ArrayLike, sigma: float, curvature: Curvature,
                          key: jax.Array | None, num_probes: int, loss: str,
                          why: str) -> jax.Array:
    """The checks of an expansion's arguments; returns ``x`` as an array."""
    if isinstance(teacher_fn, _targets.TeacherTargets):
        return _check_expansion_targets(student_fn, teacher_fn, x, sigma, curvature, loss,
                                        why)
    _checks.check_choice("curvature", curvature, CURVATURE_METHODS)
    probes: dict[str, Any] = (
        {"key": key, "num_probes": num_probes} if curvature == "hutchinson" else {})
    x = _checks.check_network_loss(x, {"student_fn": student_fn, "teacher_fn": teacher_fn},
                                   **probes)
    _checks.check_finite_positive("sigma", sigma)
    _checks.network_outputs(x, student_fn, teacher_fn)
    return x


def _check_expansion_targets(student_fn: Fn, targets: _targets.TeacherTargets,
                             x: jax.typing.ArrayLike, sigma: float, curvature: Curvature,
                             loss: str, why: str) -> jax.Array:
    """The checks of an expansion given :class:`TeacherTargets`; returns ``x`` as an array.

    Without its Laplacian terms (``curvature="none"``) an expansion needs of the teacher
    only its logits and its full input Jacobian: targets with ``outputs="all"``.
    """
    _checks.check_choice("curvature", curvature, CURVATURE_METHODS)
    if curvature != "none":
        raise _targets.refuse(loss, "teacher_fn", f"with curvature={curvature!r} {why}",
                              "Pass the teacher as a function, or use curvature='none' "
                              "(targets of outputs='all').")
    x = _checks.check_network_loss(x, {"student_fn": student_fn})
    _checks.check_finite_positive("sigma", sigma)
    if targets.outputs != "all":
        raise ValueError(f"`teacher_fn`: {loss} needs the teacher's full input Jacobian, "
                         f"`targets` computed with outputs='all'; got targets of "
                         f"outputs={targets.outputs!r}.")
    _checks.check_network_outputs(x, jax.eval_shape(student_fn, x), targets.logits)
    return x


def _teacher_jacobian(targets: _targets.TeacherTargets,
                      x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logits [B, K], input gradients [K, B, D])`` of ``targets``, in the wide dtype."""
    _, g_t = _contract.for_jacobian(targets, x, None, "all", 1)
    return _checks.widen(targets.logits), g_t


def squared_noise_expansion(student_fn: Fn,
                            teacher_fn: Fn | _targets.TeacherTargets,
                            x: jax.typing.ArrayLike,
                            *,
                            sigma: float,
                            curvature: Curvature = "exact",
                            key: jax.Array | None = None,
                            num_probes: int = 1) -> jax.Array:
    r"""Second-order expansion of squared-error distillation under input noise.

    .. math::
        \|d\|^2 + \sigma^2 \Big( \|J_T - J_S\|_F^2 + \sum_i d_i \, \Delta d_i \Big),
        \qquad d = T(x) - S(x)

    equal to ``E_xi ||T(x+xi) - S(x+xi)||^2`` up to ``O(sigma^4)`` (module docstring).
    ``curvature="none"`` drops the Laplacian term and gives Proposition 1 as printed in
    Srinivas & Fleuret (2018): exact for affine networks, off by ``O(sigma^2)`` for smooth
    ones whose outputs differ.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent; or its
        :class:`TeacherTargets` of ``outputs="all"`` for ``curvature="none"``.
      x: ``[batch_size, ...]`` floating inputs.
      sigma: noise standard deviation ``> 0``.
      curvature: the Laplacian term: ``"exact"``, ``"hutchinson"`` or ``"none"``.
      key: a ``jax.random.key`` for ``curvature="hutchinson"``.
      num_probes: Hutchinson probes.

    Returns:
      ``[batch_size]`` values.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import squared_noise_expansion
      >>> teacher = lambda x: 3.0 * x   # affine: exact; 2 + 0.25 * ||2 I||_F^2
      >>> student = lambda x: x + 1.0
      >>> print(squared_noise_expansion(student, teacher, jnp.ones((1, 2)), sigma=0.5))
      [4.]
    """
    x = _check_expansion_args(student_fn, teacher_fn, x, sigma, curvature, key, num_probes,
                              "squared_noise_expansion",
                              "its curvature term is the Laplacian of the difference T - S "
                              "weighted by T - S, one Hessian trace through both networks "
                              "together, which teacher_targets does not compute.")
    student_fn = _checks.widened(student_fn)
    if isinstance(teacher_fn, _targets.TeacherTargets):
        teacher_out, g_t = _teacher_jacobian(teacher_fn, x)
    else:
        teacher_fn = _checks.widened(teacher_fn)
        teacher_out = teacher_fn(x)
    d = jax.lax.stop_gradient(teacher_out) - student_fn(x)
    # ||J_T - J_S||_F^2: one VJP per network, applied to each of the K one-hot rows.
    num_classes = d.shape[-1]
    basis = _common.like(jnp.eye(num_classes, dtype=d.dtype)[:, None, :], d)  # [K, B, K]
    if not isinstance(teacher_fn, _targets.TeacherTargets):
        g_t = jax.lax.stop_gradient(_common.vjp_input_gradients(teacher_fn, x, basis))
    g_s = _common.vjp_input_gradients(student_fn, x, basis)
    diff = _common.flat_rows(g_t) - _common.flat_rows(g_s)
    jacobian_term = jnp.sum(jnp.square(diff), axis=(0, -1))
    value = jnp.sum(jnp.square(d), axis=-1) + sigma**2 * jacobian_term
    if isinstance(teacher_fn, _targets.TeacherTargets):  # curvature="none" (checked)
        return _contract.nan_unless_same(teacher_fn, x, value)
    if curvature == "none":
        return value
    # Targets come with curvature="none" only (_check_expansion_targets refuses others).
    assert not isinstance(teacher_fn, _targets.TeacherTargets)

    def difference(y: jax.Array) -> jax.Array:
        return teacher_fn(y) - student_fn(y)

    return value + sigma**2 * weighted_laplacian(difference, x, d, method=curvature, key=key,
                                                 num_probes=num_probes)


def cross_entropy_noise_expansion(student_fn: Fn,
                                  teacher_fn: Fn | _targets.TeacherTargets,
                                  x: jax.typing.ArrayLike,
                                  *,
                                  sigma: float,
                                  temperature: float = 1.0,
                                  curvature: Curvature = "exact",
                                  key: jax.Array | None = None,
                                  num_probes: int = 1) -> jax.Array:
    r"""Second-order expansion of soft cross-entropy under input noise.

    With ``t = softmax(T(x)/tau)``, ``s = softmax(S(x)/tau)`` (derivation in the module
    docstring):

    .. math::
        -\sum_i t_i \log s_i
        - \sigma^2 \sum_i \frac{\nabla t_i \cdot \nabla s_i}{s_i}
        + \sigma^2 \sum_i \frac{t_i \|\nabla s_i\|^2}{2 s_i^2}
        - \frac{\sigma^2}{2} \sum_i \Big( \log s_i \, \Delta t_i + \frac{t_i}{s_i} \Delta s_i \Big)

    equal to ``E_xi[-sum_i t_i(x+xi) log s_i(x+xi)]`` up to ``O(sigma^4)``.
    ``curvature="none"`` drops the last (Laplacian) sum: the first-order linearisation of
    t and s, i.e. the poster's term plus the log-curvature term.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student logits, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher logits, examples independent; or
        its :class:`TeacherTargets` of ``outputs="all"`` for ``curvature="none"`` (the
        gradients of its probabilities follow from those of its logits).
      x: ``[batch_size, ...]`` floating inputs.
      sigma: noise standard deviation ``> 0``.
      temperature: softmax temperature ``tau > 0``.
      curvature: the Laplacian terms: ``"exact"``, ``"hutchinson"`` or ``"none"``.
      key: a ``jax.random.key`` for ``curvature="hutchinson"``.
      num_probes: Hutchinson probes.

    Returns:
      ``[batch_size]`` values.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import cross_entropy_noise_expansion
      >>> f = lambda x: jnp.zeros((x.shape[0], 2), x.dtype) + 0.0 * x[:, :1]
      >>> print(cross_entropy_noise_expansion(f, f, jnp.ones((1, 3)), sigma=0.1).round(4))
      [0.6931]
    """
    x = _check_expansion_args(student_fn, teacher_fn, x, sigma, curvature, key, num_probes,
                              "cross_entropy_noise_expansion",
                              "its Laplacian terms need the Laplacians of the teacher's "
                              "softmax probabilities, which teacher_targets does not compute.")
    _checks.check_positive("temperature", temperature)

    def teacher_probs(y: jax.Array) -> jax.Array:
        # Called for a teacher function only: targets take the branch below that reads
        # their gradients, and their curvature="none" returns before the Laplacians.
        assert not isinstance(teacher_fn, _targets.TeacherTargets)
        return jax.nn.softmax(_checks.widen(teacher_fn(y)) / temperature, axis=-1)

    def student_probs(y: jax.Array) -> jax.Array:
        return jax.nn.softmax(_checks.widen(student_fn(y)) / temperature, axis=-1)

    s, s_vjp = jax.vjp(student_probs, x)
    if isinstance(teacher_fn, _targets.TeacherTargets):
        # The softmax's chain rule on the logits' Jacobian:
        # grad t_i = t_i (grad T_i - sum_j t_j grad T_j) / tau.
        logits, g_t = _teacher_jacobian(teacher_fn, x)  # [B, K], [K, B, D]
        t = jax.nn.softmax(logits / temperature, axis=-1)
        t_k = t.T[:, :, None]  # [K, B, 1]
        grad_t = t_k * (g_t - jnp.sum(t_k * g_t, axis=0)[None]) / temperature
    else:
        t, t_vjp = jax.vjp(teacher_probs, x)
        _checks.check_network_outputs(x, s, t)
        basis = _common.like(jnp.eye(t.shape[-1], dtype=t.dtype)[:, None, :], t)  # [K, B, K]
        (grad_t,) = jax.vmap(t_vjp)(basis)
    num_classes = t.shape[-1]
    basis = _common.like(jnp.eye(num_classes, dtype=s.dtype)[:, None, :], s)  # [K, B, K]
    (grad_s,) = jax.vmap(s_vjp)(basis)
    grad_t = jax.lax.stop_gradient(grad_t.reshape((num_classes, x.shape[0], -1)))
    grad_s = grad_s.reshape((num_classes, x.shape[0], -1))
    t = jax.lax.stop_gradient(t)
    s_k = s.T  # [K, B]
    value = -jnp.sum(t * jnp.log(s), axis=-1)
    poster = -jnp.sum(jnp.sum(grad_t * grad_s, axis=-1) / s_k, axis=0)
    log_curvature = jnp.sum(t.T * jnp.sum(jnp.square(grad_s), axis=-1) / (2 * jnp.square(s_k)),
                            axis=0)
    value = value + sigma**2 * (poster + log_curvature)
    if isinstance(teacher_fn, _targets.TeacherTargets):  # curvature="none" (checked)
        return _contract.nan_unless_same(teacher_fn, x, value)
    if curvature == "none":
        return value
    key_t, key_s = (None, None) if key is None else jax.random.split(key)
    # The weights carry the student's dependence; the teacher's Laplacian is a constant.
    lap_t = weighted_laplacian(teacher_probs, x, -jnp.log(s), method=curvature, key=key_t,
                               num_probes=num_probes)
    lap_s = weighted_laplacian(student_probs, x, -t / s, method=curvature, key=key_s,
                               num_probes=num_probes)
    return value + 0.5 * sigma**2 * (lap_t + lap_s)
