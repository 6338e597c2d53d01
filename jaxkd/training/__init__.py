"""Training: objectives of named loss terms, sharded jitted steps, checkpoints, metrics.

* :class:`Objective` of :class:`Term` s (``cross_entropy``, ``distillation``,
  ``logit_matching``, ``jacobian_matching``, ``vjp_projection``, ``jvp_projection``,
  ``finite_difference``, ``noisy_distillation``, ``attention_transfer``,
  ``attention_jacobian``);
* :func:`make_targets_step`: the teacher's targets of a batch, computed once, which a
  train step fed them (``batch["teacher_targets"]``) uses instead of running the teacher;
* :func:`make_train_step` (a :class:`TrainStep`) / :func:`make_eval_step`: one
  ``jax.jit`` each, batch sharded ``P("data")`` (placed by :func:`jaxkd.data.shard_batch`),
  state replicated and donated, teacher frozen by structure;
* :class:`Checkpointer` (orbax) and :class:`MetricWriter` (JSONL + TensorBoard);
* :func:`train`: the resumable loop the experiments call;
* :func:`init_lockstep_state` / :func:`make_lockstep_step` / :func:`train_lockstep`: M
  students of one architecture and objective in one jitted program (stacked states,
  per-member weights, learning rates, keys and data; docs/training.md);
* :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_file`: crash-safe
  file writes;
* :func:`initialize_distributed`, :func:`data_mesh`, :func:`replicate`, :func:`replicated`:
  scale-out (defined in :mod:`jaxkd.sharding`).

See ``docs/training.md``.
"""

from jaxkd.training._checkpoint import CheckpointError, Checkpointer
from jaxkd.training._io import atomic_file, atomic_write_json, atomic_write_text
from jaxkd.training._lockstep import (LockstepState, LockstepStep, group_size_for_memory,
                                      init_lockstep_state,
                                      make_lockstep_step, member_sharding, stack_states)
from jaxkd.training._lockstep_loop import LockstepResult, member_dir, train_lockstep
from jaxkd.training._loop import NonFiniteLossError, TrainResult, evaluate, train
from jaxkd.training._metrics import METRICS_FILE, MetricWriter, read_metrics
from jaxkd.training._objective import (Objective, Term, TermInputs, attention_jacobian,
                                       attention_transfer, cross_entropy, distillation,
                                       jacobian_matching, jvp_projection, logit_matching,
                                       noisy_distillation, vjp_projection)
from jaxkd.training._objective import finite_difference
# The scale-out names live in jaxkd.sharding; re-exported here for training code.
from jaxkd.sharding import (DATA_AXIS, HEARTBEAT_TIMEOUT_S, LOST_PROCESS_EXIT_CODE, auto_mesh,
                            data_mesh, initialize_distributed, is_main_process,
                            multi_process_env, replicate, replicated)
from jaxkd.training._step import (TARGETS_KEY, TrainState, TrainStep, init_train_state,
                                  make_eval_step, make_targets_step, make_train_step)

__all__ = [
    "CheckpointError", "Checkpointer", "DATA_AXIS", "HEARTBEAT_TIMEOUT_S",
    "LOST_PROCESS_EXIT_CODE", "METRICS_FILE", "MetricWriter",
    "NonFiniteLossError", "Objective", "Term", "TermInputs", "TrainResult", "TrainState",
    "TrainStep", "attention_jacobian", "attention_transfer", "auto_mesh", "cross_entropy",
    "data_mesh", "distillation", "evaluate", "init_train_state", "initialize_distributed",
    "is_main_process", "jacobian_matching", "jvp_projection", "logit_matching",
    "make_eval_step", "make_targets_step", "make_train_step", "multi_process_env",
    "noisy_distillation", "TARGETS_KEY", "finite_difference",
    "read_metrics", "replicate", "replicated", "train", "vjp_projection",
    "atomic_file", "atomic_write_json", "atomic_write_text",
    "LockstepResult", "LockstepState", "LockstepStep", "group_size_for_memory",
    "init_lockstep_state",
    "make_lockstep_step", "member_dir", "member_sharding", "stack_states", "train_lockstep",
]
