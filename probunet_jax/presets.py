"""Model configs (ml_collections) and the named presets of the paper's variants.

Table 3 of Bhat et al. 2022 (LIDC-IDRI, β = 1 for all):

| variant      | latent dim | rank | components N | temperature τ |
|--------------|-----------:|-----:|-------------:|--------------:|
| `aa`         | 6          | –    | –            | –             |
| `fc`         | 2          | –    | –            | –             |
| `mixture_aa` | 4          | –    | 5            | 0.36          |
| `mixture_fc` | 2          | –    | 9            | 0.28          |

The paper reports no tuned values for the low-rank ("FC-LR") variants of its code; `lr` and
`mixture_lr` use latent dim 6 with rank 2, and the mixture the N and τ of `mixture_aa`.

Normalizing-flow presets (`probunet_jax.flows`; no paper tunes them for this model, so each
keeps the tuned base of Table 3 or of the flow's own paper, with 4 layers):

| variant       | base | latent dim | flow     | layers | prior         |
|---------------|------|-----------:|----------|-------:|---------------|
| `flow_aa`     | AA   | 6          | planar   | 4      | AA (no flow)  |
| `flow_fc`     | FC   | 2          | planar   | 4      | FC (no flow)  |
| `coupling_fc` | FC   | 2          | coupling | 4      | FC + coupling |

`flow_aa` is cFlow Net (Selvan et al. 2020; their code's defaults: an AA posterior of latent dim
6 followed by 4 amortized planar layers, an AA prior, the KL by Monte Carlo). `flow_fc` puts the
same flow on the FC base of Table 3 (latent dim 2, where the paper's FC is best and 4 planar
layers can bend its ellipse into curved, multi-lobed shapes). `coupling_fc` is the invertible
alternative, an affine coupling flow of 4 layers (each coordinate of the 2-D latent is
transformed twice) on the prior as well as the posterior, so that both can leave the Gaussian
family. The sweep searches the number of layers (`search.space`).

`mixture_fc_auto` (not in the paper) is Mixture-FC with N = 10 components, the search space's
maximum, that learns how many it uses (`component_pruning`).

Hierarchical presets (``HIERARCHICAL_VARIANTS``, `probunet_jax.hierarchical`): latent maps at
the ``latent_scales`` coarsest decoder scales, the latent dim being that of one position:

| variant           | latent scales | latent dim per position | components N | temperature τ |
|-------------------|--------------:|------------------------:|-------------:|--------------:|
| `hier_aa`         | 2             | 1                       | –            | –             |
| `hier_mixture_aa` | 2             | 4                       | 5            | 0.36          |

`hier_aa` is HPU-Net's latent (AA, one dimension per position; Kohl et al. 2019);
`hier_mixture_aa` puts Table 3's Mixture-AA at every position. Two scales are the two coarsest
decoder scales of any 4-level network (the quick start's and the paper's: 1/8 and 1/4 of the
image), which HPU-Net's latents (the coarse half of its decoder) resemble most. FC and LR work
per position too (``variant='custom'``), but not as CPU presets: their batched LAPACK solves
over every position deadlock jaxlib 0.10's CPU thread pool (README, "Hierarchical latents").
"""

from __future__ import annotations

import ml_collections

from probunet_jax import component_pruning, distributions, networks

PAPER_FILTERS = (32, 64, 128, 512)
# The most MiB of activations per convolution on the CPU (`networks.sliced_conv`): slices of 8
# images at the paper network's top level; at batch 32 it trained faster than 16 MiB or no
# slicing (README "Performance"). It does not change the model.
CONV_SLICE_MIB = 32.0
# The network, latent layout and KL of the authors' code (ishaanb92/GeneralizedProbabilisticUNet,
# scripts/train.py: unet_mode 'shallow' for LIDC, mc_samples=1000; README "Paper, code and this
# project"); experiments/configs/authors.py uses it with their training settings.
AUTHORS_NETWORK = dict(
    filters=(32, 64, 128, 256),
    convs_per_block=3,
    head_depth=4,
    norm="authors",
    init_scheme="authors",
    align_corners=True,
    latent_layout="authors",
    lr_parameterization="covariance",
    kl_samples=1000,
)
# The model fields that define a variant's latent space; the others define the network and loss.
LATENT_FIELDS = (
    "variant",
    "latent_kind",
    "latent_dim",
    "rank",
    "num_components",
    "temperature",
    "flow",
    "flow_layers",
    "prior_flow",
    "latent_scales",
)
# A learned number of components (sparsity prior and pruning) is part of a variant's latent too.
LATENT_FIELDS += component_pruning.CONFIG_FIELDS

VARIANTS: dict[str, dict] = {
    "aa": dict(latent_kind="aa", latent_dim=6),
    "fc": dict(latent_kind="fc", latent_dim=2),
    "lr": dict(latent_kind="lr", latent_dim=6, rank=2),
    "mixture_aa": dict(latent_kind="aa", latent_dim=4, num_components=5, temperature=0.36),
    "mixture_fc": dict(latent_kind="fc", latent_dim=2, num_components=9, temperature=0.28),
    "mixture_lr": dict(latent_kind="lr", latent_dim=6, rank=2, num_components=5, temperature=0.36),
    "flow_aa": dict(latent_kind="aa", latent_dim=6, flow="planar", flow_layers=4),
    "flow_fc": dict(latent_kind="fc", latent_dim=2, flow="planar", flow_layers=4),
    "coupling_fc": dict(
        latent_kind="fc", latent_dim=2, flow="coupling", flow_layers=4, prior_flow=True
    ),
}
# Mixture-FC that learns its number of components (component_pruning): N = 10, the search
# space's maximum, a sparse Dirichlet prior on the aggregate weights, and pruning.
VARIANTS["mixture_fc_auto"] = dict(
    VARIANTS["mixture_fc"],
    num_components=10,
    sparsity_weight=1.0,
    prune_threshold=0.02,
    prune_patience=100,
    prune_decay=0.99,
)
# Latent maps at `latent_scales` decoder scales (`probunet_jax.hierarchical`); latent_dim per
# position.
HIERARCHICAL_VARIANTS: dict[str, dict] = {
    "hier_aa": dict(latent_kind="aa", latent_dim=1, latent_scales=2),
    "hier_mixture_aa": dict(
        latent_kind="aa", latent_dim=4, num_components=5, temperature=0.36, latent_scales=2
    ),
}
# Every preset: what a variant name may be.
ALL_VARIANTS: dict[str, dict] = {**VARIANTS, **HIERARCHICAL_VARIANTS}


CUSTOM = "custom"  # model.variant of a latent configured by hand, not by a preset.


def check_variant(variant: str, *, allow_custom: bool = False) -> None:
    """Raises ValueError for a name that is not a preset (or ``CUSTOM`` where allowed)."""
    known = [*ALL_VARIANTS, CUSTOM] if allow_custom else list(ALL_VARIANTS)
    if variant not in known:
        raise ValueError(f"Unknown model variant {variant!r}; expected one of {known}.")


def model_config(variant: str = "mixture_fc", **overrides) -> ml_collections.ConfigDict:
    """The model config of a paper variant (Table 3), with the paper's network, and overrides.

    Fields: variant, latent_kind ("aa" | "fc" | "lr"), latent_dim, rank, num_components (1 = no
    mixture), temperature, latent_scales (0: one global latent; L > 0: latent maps at the L coarsest
    decoder scales, `probunet_jax.hierarchical`, latent_dim per position), flow ("none" | "planar" |
    "radial" | "coupling": a normalizing flow on the posterior), flow_layers, prior_flow (the prior
    is the flow too: coupling only), beta (KL weight), kl_samples (Monte Carlo KL samples for
    mixtures and flows), filters (block widths, last = bottleneck), convs_per_block, head_depth (1×1
    layers including the logits layer; the hierarchical model has one logits layer), num_classes (1
    = binary, sigmoid); the options that follow the paper's text or the authors' code
    (``AUTHORS_NETWORK``): norm ('paper' | 'authors'), init_scheme ('flax' | 'authors'),
    align_corners (bilinear upsampling), latent_layout ('compact' | 'authors') and
    lr_parameterization ('scale' | 'covariance'), see `networks` and `distributions`; preset_name,
    the name of the settings (e.g. 'authors'), shown with the variant in comparisons ('' for none,
    see :func:`model_name`); conv_slice_mib (the most MiB of activations per convolution on the
    CPU, the same map at any value, `networks.sliced_conv`); a learned number of mixture
    components (`component_pruning`, 0 = off): sparsity_weight (λ of the sparse Dirichlet prior
    on the aggregate weights), prune_threshold, prune_patience and prune_decay (the moving
    average of the usage).

    Overriding a latent field (``latent_dim``...) makes a custom latent: pass
    ``variant=CUSTOM`` for that (:func:`check_model_config` rejects a preset name whose latent
    fields were changed).
    """
    check_variant(variant, allow_custom=True)
    config = ml_collections.ConfigDict(
        dict(
            variant=variant,
            latent_kind="aa",
            latent_dim=6,
            rank=1,
            num_components=1,
            temperature=0.5,
            flow="none",
            flow_layers=0,
            prior_flow=False,
            latent_scales=0,
            beta=1.0,
            kl_samples=distributions.DEFAULT_KL_SAMPLES,
            filters=PAPER_FILTERS,
            convs_per_block=3,
            head_depth=4,
            num_classes=1,
            norm="paper",
            init_scheme="flax",
            align_corners=False,
            conv_slice_mib=CONV_SLICE_MIB,
            latent_layout="compact",
            lr_parameterization="scale",
            preset_name="",
            **component_pruning.CONFIG_DEFAULTS,
        )
    )
    config.update(ALL_VARIANTS.get(variant, {}))
    for key in overrides:
        if key not in config:
            raise ValueError(f"Unknown model config key {key!r}; known keys: {sorted(config)}.")
    config.update(overrides)
    return config


def with_variant(
    model: ml_collections.ConfigDict, variant: str, **overrides
) -> ml_collections.ConfigDict:
    """The config of ``variant`` that keeps the network and loss fields of ``model`` (filters,
    head, β, KL samples...), with ``overrides`` on top."""
    kept = {k: v for k, v in model.items() if k not in LATENT_FIELDS}
    return model_config(variant, **{**kept, **overrides})


def latent_spec(model: ml_collections.ConfigDict) -> distributions.LatentSpec:
    """The validated `LatentSpec` of a model config."""
    return distributions.LatentSpec(
        kind=model.latent_kind,
        latent_dim=model.latent_dim,
        num_components=model.num_components,
        rank=model.rank,
        temperature=model.temperature,
        layout=model.latent_layout,
        lr_parameterization=model.lr_parameterization,
        flow=model.flow,
        flow_layers=int(model.flow_layers),
        prior_flow=bool(model.prior_flow),
    ).validate()


def model_name(model: ml_collections.ConfigDict) -> str:
    """The name of a model in summaries and comparisons: ``'<variant> (<preset_name>)'``, or
    the variant alone when ``preset_name`` is empty."""
    return f"{model.variant} ({model.preset_name})" if model.preset_name else model.variant


def changed_latent_fields(model: ml_collections.ConfigDict, variant: str) -> list[str]:
    """The latent fields (``latent_dim``...) in which ``model`` differs from preset ``variant``."""
    preset = model_config(variant)
    return [f for f in LATENT_FIELDS[1:] if model[f] != preset[f]]


def check_model_config(model: ml_collections.ConfigDict) -> None:
    """Raises ValueError for an unknown variant, latent fields that disagree with the variant's
    preset (naming both), an invalid latent or an out-of-range network or loss field."""
    check_variant(model.variant, allow_custom=True)
    if model.variant != CUSTOM:
        preset = model_config(model.variant)
        wrong = changed_latent_fields(model, model.variant)
        if wrong:
            given = ", ".join(f"{f} {model[f]!r}" for f in wrong)
            expected = ", ".join(f"{f} {preset[f]!r}" for f in wrong)
            raise ValueError(
                f"model.variant {model.variant!r} has {expected}, but the config has {given}. "
                f"Select a variant with --config=FILE:VARIANT, or set model.variant={CUSTOM!r} "
                "for a latent of your own."
            )
    latent_spec(model)
    component_pruning.check_config(model)
    networks.check_options(model.norm, model.init_scheme)
    if len(model.filters) < 1 or min(model.filters) < 1:
        raise ValueError(f"model.filters must be positive block widths, got {model.filters}.")
    for field in ("convs_per_block", "head_depth", "num_classes", "kl_samples"):
        if int(model[field]) < 1:
            raise ValueError(f"model.{field} must be >= 1, got {model[field]}.")
    networks.sliced_conv(float(model.get("conv_slice_mib", 0.0)))
    scales, levels = int(model.latent_scales), len(model.filters)
    if not 0 <= scales <= levels - 1:
        raise ValueError(
            f"model.latent_scales must be 0 (one global latent) or 1 to len(model.filters) - 1 "
            f"= {levels - 1} (latent maps at the coarsest decoder scales of the {levels} levels "
            f"of model.filters {tuple(model.filters)}), got {scales}."
        )
    if scales and (model.flow != "none" or component_pruning.learns_components(model)):
        raise ValueError(
            f"model.latent_scales {scales} (hierarchical latents) takes no flow and no learned "
            f"number of components; got model.flow {model.flow!r}, model.sparsity_weight "
            f"{model.sparsity_weight}, model.prune_threshold {model.prune_threshold}."
        )
    if not model.beta >= 0:
        raise ValueError(f"model.beta must be >= 0, got {model.beta}.")
