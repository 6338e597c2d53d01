"""jaxkd: knowledge transfer with Jacobian matching in JAX.

Subpackages, by concept:

* :mod:`jaxkd.losses`   pure loss functions (distillation, Jacobian matching,
  random projections, input-noise distillation, attention transfer).
* :mod:`jaxkd.models`   Flax teacher/student zoo and the model -> pure-function helper.
* :mod:`jaxkd.training` objectives, sharded jitted steps, checkpoints, metrics.
* :mod:`jaxkd.data`     the offline digits default, tfds, image folders, few-shot subsets.
* :mod:`jaxkd.sharding` meshes, batch placement, replication, the multi-host start
  (re-exported by ``jaxkd.data`` and ``jaxkd.training``).

The library reads no configuration; ``experiments/`` owns that.
"""

__version__ = "0.2.0"
