"""The search space of the paper (Bhat et al. 2022, Appendix A, Table 2) and its trial configs.

| hyperparameter       | range        | search         | used by                              |
|----------------------|--------------|----------------|--------------------------------------|
| latent dimension     | {2, 4, 6, 8} | grid           | every variant                        |
| β (KL weight)        | {1, 10, 100} | grid           | every variant                        |
| rank                 | [1, 5]       | random (int)   | ``lr``, ``mixture_lr``; < latent dim |
| mixture components N | [1, 10]      | random (int)   | ``mixture_*``                        |
| temperature τ        | [0.1, 0.5]   | random (float) | ``mixture_*``                        |
| flow layers          | [1, 8]       | random (int)   | the flows (``flow_*``, ``coupling_*``) |

The flow layers are not in the paper (it has no flows): the range goes from one layer to twice
the presets' 4 (cFlow Net's default; Selvan et al. 2020), beyond which a per-image amortized
flow of a 2- to 8-D latent has more parameters than the conditioner's evidence supports.

A variant that learns its number of components (``mixture_fc_auto``, see
``component_pruning``) is not searched over N: it always starts with the range's maximum
(10) and prunes; only its temperature is drawn.

The hierarchical variants (``presets.HIERARCHICAL_VARIANTS``) search their latent dimension
per position on their own grid, and their number of latent scales at random:

| hyperparameter                 | range     | search       | used by                          |
|--------------------------------|-----------|--------------|----------------------------------|
| latent dimension per position  | {1, 2, 4} | grid         | ``hier_*`` (HPU-Net 1, PHiSeg 2) |
| latent scales                  | [1, 3]    | random (int) | ``hier_*``; < the network's levels |

:func:`search_points` crosses the grid with ``num_random`` seeded draws of the variant's random
hyperparameters per grid point (one point per grid point for ``aa`` and ``fc``, which have
none). :func:`trial_config` puts a point into a base config. A mixture drawing N = 1 is a single
Gaussian (the paper's range includes it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from probunet_jax import component_pruning, presets
from probunet_jax import config as config_lib


class SearchSpace(NamedTuple):
    """A search space; the default is the paper's (Table 2). Ranges are inclusive."""

    latent_dims: tuple[int, ...] = (2, 4, 6, 8)
    betas: tuple[float, ...] = (1.0, 10.0, 100.0)
    rank_range: tuple[int, int] = (1, 5)
    components_range: tuple[int, int] = (1, 10)
    temperature_range: tuple[float, float] = (0.1, 0.5)
    flow_layers_range: tuple[int, int] = (1, 8)
    position_latent_dims: tuple[int, ...] = (1, 2, 4)  # Hierarchical variants' grid.
    latent_scales_range: tuple[int, int] = (1, 3)  # Hierarchical variants, random.


PAPER_SEARCH_SPACE = SearchSpace()


def is_hierarchical_variant(variant: str) -> bool:
    """Whether a (known) variant has latent maps at several scales."""
    return presets.ALL_VARIANTS[variant].get("latent_scales", 0) > 0


def _random_names(variant: str) -> tuple[str, ...]:
    """The randomly searched model fields of a (known) variant: rank (low-rank kinds),
    num_components and temperature (mixtures; the temperature alone where the variant learns
    its number of components), flow_layers (flows), latent_scales (hierarchical variants)."""
    preset = presets.ALL_VARIANTS[variant]
    names = ()
    if preset["latent_kind"] == "lr":
        names += ("rank",)
    if preset.get("num_components", 1) > 1:
        learned = component_pruning.learns_components(preset)
        names += ("temperature",) if learned else ("num_components", "temperature")
    if preset.get("flow", "none") != "none":
        names += ("flow_layers",)
    if is_hierarchical_variant(variant):
        names += ("latent_scales",)
    return names


def _check_range(name: str, bounds: Sequence[float], low_limit: float) -> None:
    if len(bounds) != 2 or not low_limit <= bounds[0] <= bounds[1]:
        raise ValueError(
            f"{name} must be (low, high) with {low_limit} <= low <= high, got {bounds}."
        )


def check_space(space: SearchSpace) -> None:
    """Raises ValueError for an empty grid or an invalid range."""
    if not space.latent_dims or not space.betas:
        raise ValueError(
            f"Empty search space: latent_dims={space.latent_dims}, betas={space.betas}; "
            "both grids need at least one value."
        )
    if min(space.latent_dims) < 1:
        raise ValueError(f"latent dims must be >= 1, got {space.latent_dims}.")
    if not space.position_latent_dims or min(space.position_latent_dims) < 1:
        raise ValueError(
            "position_latent_dims must list latent dims >= 1 (an empty grid is an empty search "
            f"space for the hierarchical variants), got {space.position_latent_dims}."
        )
    _check_range("latent_scales_range", space.latent_scales_range, 1)
    if min(space.betas) < 0:
        raise ValueError(f"betas must be >= 0, got {space.betas}.")
    _check_range("rank_range", space.rank_range, 1)
    _check_range("components_range", space.components_range, 1)
    _check_range("temperature_range", space.temperature_range, 0)
    _check_range("flow_layers_range", space.flow_layers_range, 1)
    if not space.temperature_range[0] > 0:
        raise ValueError(f"temperatures must be > 0, got {space.temperature_range}.")


def rank_bounds(space: SearchSpace, latent_dim: int) -> tuple[int, int]:
    """Inclusive rank range at ``latent_dim``: ``space.rank_range`` cut to rank < latent_dim."""
    low, high = space.rank_range[0], min(space.rank_range[1], latent_dim - 1)
    if high < low:
        raise ValueError(
            f"Empty search space: no rank in {space.rank_range} is < latent_dim={latent_dim} "
            "(the low-rank variants need latent_dim >= 2)."
        )
    return int(low), int(high)


def scales_bounds(space: SearchSpace, max_latent_scales: int | None) -> tuple[int, int]:
    """Inclusive latent-scales range: ``space.latent_scales_range`` cut to ``max_latent_scales``
    (the network's levels − 1; None: no cut)."""
    low, high = space.latent_scales_range
    if max_latent_scales is not None:
        high = min(high, max_latent_scales)
    if high < low:
        raise ValueError(
            f"Empty search space: no latent_scales in {space.latent_scales_range} is <= "
            f"{max_latent_scales}, the most the network's model.filters allow (levels - 1)."
        )
    return int(low), int(high)


def sample_random(
    names: tuple[str, ...],
    space: SearchSpace,
    latent_dim: int,
    rng: np.random.Generator,
    max_latent_scales: int | None = None,
) -> dict[str, Any]:
    """One draw of the random hyperparameters ``names``, as plain Python scalars.

    Integers are uniform on their inclusive ranges; the temperature is uniform, rounded to 3
    decimals so that the recorded value is the trained one.
    """
    values: dict[str, Any] = {}
    if "rank" in names:
        low, high = rank_bounds(space, latent_dim)
        values["rank"] = int(rng.integers(low, high + 1))
    if "num_components" in names:
        low, high = space.components_range
        values["num_components"] = int(rng.integers(low, high + 1))
    if "temperature" in names:
        values["temperature"] = round(float(rng.uniform(*space.temperature_range)), 3)
    if "flow_layers" in names:
        low, high = space.flow_layers_range
        values["flow_layers"] = int(rng.integers(low, high + 1))
    if "latent_scales" in names:
        low, high = scales_bounds(space, max_latent_scales)
        values["latent_scales"] = int(rng.integers(low, high + 1))
    return values


def grid(space: SearchSpace, *, hierarchical: bool = False) -> list[tuple[int, float]]:
    """The grid points (latent_dim, beta), latent dim major (``space.position_latent_dims``
    for a hierarchical variant)."""
    dims = space.position_latent_dims if hierarchical else space.latent_dims
    return [(int(d), float(b)) for d in dims for b in space.betas]


def search_points(
    variant: str,
    space: SearchSpace = PAPER_SEARCH_SPACE,
    *,
    num_random: int = 1,
    seed: int = 0,
    max_latent_scales: int | None = None,
) -> list[dict[str, Any]]:
    """The model values of every trial: the grid × ``num_random`` draws per grid point.

    Draw ``r`` at grid point ``g`` uses ``numpy.random.default_rng((seed, g, r))``, so adding
    draws keeps the earlier ones. Variants without random hyperparameters get one point per grid
    point; duplicate draws are dropped. A hierarchical variant's latent scales are drawn up to
    ``max_latent_scales`` (the base network's levels − 1) if given.

    Returns:
      ``[{'latent_dim': int, 'beta': float, <the variant's random fields>}, ...]``; a variant
      that learns its number of components also gets ``num_components``, the range's maximum.
    """
    presets.check_variant(variant)
    check_space(space)
    if num_random < 1:
        raise ValueError(f"num_random must be >= 1, got {num_random}.")
    names = _random_names(variant)
    draws = num_random if names else 1
    points, seen = [], set()
    hierarchical = is_hierarchical_variant(variant)
    for g, (latent_dim, beta) in enumerate(grid(space, hierarchical=hierarchical)):
        for r in range(draws):
            rng = np.random.default_rng((seed, g, r))
            point = {"latent_dim": latent_dim, "beta": beta}
            if component_pruning.learns_components(presets.ALL_VARIANTS[variant]):
                point["num_components"] = int(space.components_range[1])
            point.update(sample_random(names, space, latent_dim, rng, max_latent_scales))
            key = tuple(sorted(point.items()))
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def trial_config(
    base: ml_collections.ConfigDict, variant: str, point: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A valid copy of ``base`` whose model is ``variant`` with the values of ``point``.

    ``model.variant`` stays the preset's name where the point keeps its latent fields and is
    ``'custom'`` where it changes them (``config.validate`` requires that). The trial never
    looks at the test split: ``eval.split`` is 'validation', and ``eval.num_samples`` is 0 (the
    search evaluates the best checkpoint itself).
    """
    config = config_lib.with_variant(base, variant)
    config.model.update(point)
    if presets.changed_latent_fields(config.model, variant):
        config.model.variant = presets.CUSTOM
    config.eval.split = "validation"
    config.eval.num_samples = 0
    config_lib.validate(config)
    return config
