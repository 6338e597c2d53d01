"""Opt-in rematerialisation of the Jacobian losses, in chunks of the batch.

A Jacobian loss differentiated in the student's parameters keeps, for the backward pass,
the residuals of the student's forward *and* backward pass (reverse-over-reverse), and
its forward pass holds the teacher's activations for the teacher's VJP, all at once and
beside the residuals of the step's own forward pass. ``jax.checkpoint`` around an opaque
network cannot shrink that (the rematerialised forward and backward are alive together
when the outer backward runs; measured: no saving, sometimes more). What does shrink it
is to split the batch: the examples are independent, so the loss is computed over
``chunks`` slices of the batch one after the other (``jax.lax.map``), the student's part
inside ``jax.checkpoint`` (it saves only its inputs and recomputes the rest in the
backward pass, one slice at a time) and the teacher's part outside it (a constant, never
recomputed). The live memory of the term falls about ``chunks``-fold; the values and
gradients are those of the whole batch up to float round-off. The price is one more
forward and backward pass of the student in the backward pass, and slices that run in
sequence.

Measured (the user-style Linen CNN of ``benchmarks/user_model.py``, batch 64,
2-core CPU, XLA buffer-assignment peak): KD step 34.1 MiB, JM step 54.6 MiB (1.60x),
JM with ``remat_chunks=2`` 39.6 MiB (1.16x), ``=4`` 35.6 MiB (1.04x). On XLA:CPU the time
cost is large: convolutions inside a while loop (``jax.lax.map``) run about 10x slower
than the same code outside one (a plain CNN gradient: 159 ms, 1760 ms in 4 mapped
slices), and the step with ``remat_chunks=4`` took 6x the time of the step without.
Unrolling the slices (chained by ``optimization_barrier``, with a custom VJP) keeps the
speed but XLA's scheduler then overlaps them and saves no memory (measured: 71.6 MiB).
Use it where memory, not time, is what runs out (accelerators, large batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def map_chunks(fn: Callable[..., tuple[jax.Array, ...]], chunks: int,
               args: Sequence[jax.Array], in_axes: Sequence[int], out_axes: Sequence[int],
               *, remat: bool) -> tuple[jax.Array, ...]:
    """``fn(*args)`` computed over ``chunks`` slices of the batch, one after the other.

    Args:
      fn: per-example function of ``args`` returning a tuple of arrays; the batch axis of
        argument ``i`` is ``in_axes[i]``, of output ``j`` ``out_axes[j]``.
      chunks: the number of slices (at most the batch size). Slice ``c`` holds the
        examples ``c, c + chunks, ...``: strided, so that a batch axis sharded over
        devices stays sharded the same way inside every slice. A batch not divisible by
        ``chunks`` is padded with copies of its first examples, dropped afterwards.
      args: the arrays.
      in_axes, out_axes: batch axes of the arguments and outputs.
      remat: wrap ``fn`` in ``jax.checkpoint`` (save nothing but its inputs).

    Returns:
      ``fn``'s outputs for the whole batch.
    """
    batch = args[0].shape[in_axes[0]]
    n = min(chunks, batch)
    body = jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable) if remat else fn
    if n == 1:
        return body(*args)
    pad = (-batch) % n
    per_chunk = (batch + pad) // n

    def split(a, axis):
        if pad:
            a = jnp.concatenate([a, jax.lax.slice_in_dim(a, 0, pad, axis=axis)], axis=axis)
        a = a.reshape(a.shape[:axis] + (per_chunk, n) + a.shape[axis + 1:])
        return jnp.moveaxis(a, axis + 1, 0)

    def merge(a, axis):
        a = jnp.moveaxis(a, 0, axis + 1)
        a = a.reshape(a.shape[:axis] + (per_chunk * n,) + a.shape[axis + 2:])
        return jax.lax.slice_in_dim(a, 0, batch, axis=axis)

    outs = jax.lax.map(lambda chunk: body(*chunk),
                       tuple(split(a, axis) for a, axis in zip(args, in_axes)))
    return tuple(merge(o, axis) for o, axis in zip(outs, out_axes))
