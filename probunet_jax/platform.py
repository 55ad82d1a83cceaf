"""XLA options for the CPU backend, applied by the launchers before JAX starts.

``configure_cpu()`` adds ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` when all of these hold: JAX has not
initialized a backend yet (XLA reads the variable once, at backend start), the user has not set
``XLA_FLAGS`` themselves (their choice wins), and the platform JAX will use is the CPU (no
``JAX_PLATFORMS`` naming another platform and no GPU/TPU plugin installed). Call it first thing
in a launcher's ``main``; it is a no-op everywhere else. The flags only change how XLA:CPU
compiles, never the model or its parameters.

Measured on a 2-core AMD EPYC (Zen 3), jaxlib 0.10.2 (see ``experiments/benchmark.py`` and the
README's performance section): the default XLA:CPU of this jaxlib already runs convolutions and
dots through YNNPACK (``__ynn_fusion``). The other options tried, compiled side by side in one
process on the same train step (``xla_cpu_use_xnnpack``, ``xla_cpu_use_onednn``,
``xla_cpu_enable_fast_math``, YNNPACK off with ``xla_cpu_experimental_ynn_fusion_type=``), were
within the noise of the shared machine (±10 %) or change numerics (fast math), so the list is
empty: the defaults are the fast path, and the hook is where a measured flag would go.
"""

from __future__ import annotations

import importlib.util
import os

# Flags that made the train step measurably faster on CPU; empty: the defaults are the fast path.
CPU_XLA_FLAGS: tuple[str, ...] = ()

_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")

_configured: list[str] = []


def _backend_started() -> bool:
    """Whether JAX (if imported) has already initialized a backend."""
    import sys

    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started and started())


def cpu_is_the_platform() -> bool:
    """Whether JAX will run on the CPU: ``JAX_PLATFORMS`` says cpu, or no accelerator plugin."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def configure_cpu(flags: tuple[str, ...] = CPU_XLA_FLAGS) -> list[str]:
    """Adds ``flags`` to ``XLA_FLAGS`` on CPU when the user has not set it; returns those added."""
    if not flags or "XLA_FLAGS" in os.environ or _backend_started() or not cpu_is_the_platform():
        return []
    os.environ["XLA_FLAGS"] = " ".join(flags)
    _configured[:] = list(flags)
    return list(flags)


def configured_flags() -> list[str]:
    """The flags that ``configure_cpu`` set in this process (empty if it set none)."""
    return list(_configured)
