"""The only module that names mesh axes.

One `jax.sharding.Mesh` with axes ("data", "fsdp", "tensor") built from `config.mesh`. Batches
are sharded over data×fsdp; parameters are replicated, or FSDP-sharded along their largest
divisible dimension, or tensor-sharded by path rules. Everything else in clipjax speaks of
`batch_sharding(mesh)` / `param_shardings(...)` and never of axis names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax import tree as tree_lib

__all__ = [
  "AXES",
  "batch_sharding",
  "constrain",
  "make_global_batch",
  "make_mesh",
  "maybe_initialize_distributed",
  "param_shardings",
  "replicated",
]

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Tensor-parallel rules for the CLIP blocks: (regex on the param name, dim to shard).
# Column-parallel first matmul, row-parallel second one (Megatron style).
TENSOR_RULES: tuple[tuple[str, int], ...] = (
  (r".*/attn/in_proj/kernel", 1),
  (r".*/attn/in_proj/bias", 0),
  (r".*/attn/out_proj/kernel", 0),
  (r".*/mlp/c_fc/kernel", 1),
  (r".*/mlp/c_fc/bias", 0),
  (r".*/mlp/c_proj/kernel", 0),
)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh; one axis size may be -1 (all remaining devices).

  Args:
    mesh_config: `{"data": -1, "fsdp": 1, "tensor": 1}`-like mapping; unknown axes are an error.
    devices: devices to use (default: all global devices).
  """
  unknown = set(mesh_config) - set(AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; valid axes are {AXES}.")
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(mesh_config.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(AXES, sizes))}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices are not divisible by the fixed mesh axes {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f"Mesh {dict(zip(AXES, sizes))} needs {np.prod(sizes)} devices, have {len(devices)}."
    )
  # Auto axes: XLA's partitioner places collectives; model code needs no sharding annotations.
  return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data×fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _leaf_spec(name: str, shape: tuple[int, ...], mesh: Mesh, fsdp_min_size: int) -> P:
  spec: list[Any] = [None] * len(shape)
  tensor = mesh.shape["tensor"]
  if tensor > 1:
    for pattern, dim in TENSOR_RULES:
      if re.fullmatch(pattern, name) and dim < len(shape) and shape[dim] % tensor == 0:
        spec[dim] = "tensor"
        break
  fsdp = mesh.shape["fsdp"]
  if fsdp > 1 and int(np.prod(shape)) >= fsdp_min_size:
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if spec[dim] is None and shape[dim] % fsdp == 0:
        spec[dim] = "fsdp"
        break
  return P(*spec)


def param_shardings(params: Any, mesh: Mesh, *, fsdp_min_size: int = 2**14) -> Any:
  """NamedShardings for a params-like pytree (arrays or ShapeDtypeStructs), by leaf path."""
  return tree_lib.tree_map_with_names(
    lambda name, x: NamedSharding(mesh, _leaf_spec(name, tuple(x.shape), mesh, fsdp_min_size)),
    params,
  )


def constrain(x: jax.Array, mesh: Mesh, *logical_axes: str | None) -> jax.Array:
  """Sharding hint with logical names: 'batch' (data×fsdp), 'model' (tensor) or None."""
  table = {"batch": BATCH_AXES, "model": "tensor", None: None}
  return jax.lax.with_sharding_constraint(
    x, NamedSharding(mesh, P(*(table[a] for a in logical_axes)))
  )


def make_global_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def maybe_initialize_distributed(mode: str) -> bool:
  """Calls `jax.distributed.initialize()` when asked or when it can auto-detect a cluster.

  Args:
    mode: "on" (always), "off" (never) or "auto" (on Cloud TPU VMs or when
      JAX_COORDINATOR_ADDRESS is set). A plain CPU host has nothing to detect and
      `initialize()` would raise, hence "auto" rather than always.

  Environment: JAX reads `JAX_COORDINATOR_ADDRESS` itself and auto-detects TPU, Slurm, OpenMPI
  and Kubernetes; elsewhere (plain multi-node GPU or CPU hosts) set `CLIPJAX_NUM_PROCESSES` and
  `CLIPJAX_PROCESS_ID` as well, which are passed on as `num_processes` / `process_id`.

  Returns:
    Whether the distributed runtime was initialised.
  """
  if mode not in ("on", "off", "auto"):
    raise ValueError(f"config.distributed must be 'on', 'off' or 'auto', got {mode!r}.")
  if mode == "off":
    return False
  on_tpu_vm = bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_NAME"))
  if mode == "auto" and not (on_tpu_vm or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return False
  kwargs = {}
  for env, arg in (
    ("CLIPJAX_NUM_PROCESSES", "num_processes"),
    ("CLIPJAX_PROCESS_ID", "process_id"),
  ):
    if os.environ.get(env):
      try:
        kwargs[arg] = int(os.environ[env])
      except ValueError as e:
        raise ValueError(f"{env} must be an integer, got {os.environ[env]!r}.") from e
  jax.distributed.initialize(**kwargs)
  return True
