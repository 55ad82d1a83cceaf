r"""Bias and spread of the Monte Carlo KL of the mixture and flow presets against the count K.

  python -m experiments.kl_samples                      # the README's table (a minute on a CPU)
  python -m experiments.kl_samples --sample_counts=1,4,16,64,256 --repeats=400
  python -m experiments.kl_samples --variants=flow_aa,flow_fc,coupling_fc   # the flow presets

For each preset, a batch of random posterior/prior raw parameters (standard normal) is
turned into distributions; a high-sample estimate is the reference; each K is repeated with
independent keys. Prints, per preset and K, the bias of the batch-mean KL and its standard
deviation relative to the reference KL (the batch mean is what enters the loss).
"""

from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags

from experiments import cli
from probunet_jax import distributions, presets

_VARIANTS = flags.DEFINE_list("variants", ["mixture_fc", "mixture_aa", "mixture_lr"], "Presets.")
_COUNTS = flags.DEFINE_list("sample_counts", ["1", "4", "16", "64", "256"], "Values of K.")
_REPEATS = flags.DEFINE_integer("repeats", 400, "Independent estimates per K.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Random q/p pairs.")
_REFERENCE = flags.DEFINE_integer("reference_samples", 100_000, "Samples of the reference.")


def study(variant: str, counts: Sequence[int], repeats: int, batch: int, reference: int):
    """Rows (K, bias, relative std) of the batch-mean Monte Carlo KL for one preset."""
    spec = presets.latent_spec(presets.model_config(variant))
    raw_q, raw_p = jax.random.normal(jax.random.key(0), (2, batch, spec.num_params))
    q = distributions.make_latent_distribution(raw_q, spec)
    # The prior's family: the posterior's but for a flow of the posterior only.
    p = distributions.make_latent_distribution(
        raw_p[:, : spec.prior_spec.num_params], spec.prior_spec
    )
    exact = float(
        distributions.kl_divergence(q, p, key=jax.random.key(1), num_samples=reference).mean()
    )
    rows = []
    for k in counts:
        keys = jax.random.split(jax.random.key(2), repeats)
        # lax.map, not vmap: a vmapped batch of solves this large can hang jaxlib 0.10's CPU
        # LAPACK kernels (see distributions.KL_CHUNK).
        estimate = jax.jit(
            lambda keys, k=k: jax.lax.map(
                lambda key: distributions.kl_divergence(q, p, key=key, num_samples=k), keys
            )
        )(keys)
        batch_mean = np.asarray(estimate).mean(axis=1)
        rows.append((k, float(batch_mean.mean()) - exact, float(batch_mean.std()) / exact))
    return exact, rows


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    counts = [int(k) for k in _COUNTS.value]
    print("| preset | reference KL | K | bias | relative std of the batch mean |")
    print("|---|---:|---:|---:|---:|")
    for variant in _VARIANTS.value:
        exact, rows = study(variant, counts, _REPEATS.value, _BATCH.value, _REFERENCE.value)
        for k, bias, spread in rows:
            print(f"| {variant} | {exact:.3f} | {k} | {bias:+.4f} | {100 * spread:.1f} % |")


if __name__ == "__main__":
    cli.run(main)
