"""Data-parallel sharding: a 1-D device mesh and host batches placed on it."""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes), axis ``'data'``."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Per-process numpy batch -> global jax.Arrays sharded along the leading axis over 'data'.

    Every leaf's leading axis is this process's share (``B_local``); the global arrays have
    ``B_local * process_count`` rows. ``B_local`` must be divisible by the number of this
    process's devices in ``mesh``.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    local_devices = len(mesh.local_devices)

    def place(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"Cannot shard an array of shape {x.shape} over {local_devices} local devices: "
                "its leading (batch) axis must be divisible by the device count."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place, batch)
