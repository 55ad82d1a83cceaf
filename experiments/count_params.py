r"""Prints the parameter counts of the variants (U-Net, prior, posterior, decoder, head, total).

The hierarchical variants have no separate U-Net (their prior net is the encoder and the
decoder down to the latent scales, the decoder the rest); the global-latent ones no decoder.

python -m experiments.count_params                      # all variants, 128×128, paper network
python -m experiments.count_params --network=authors    # the network of the authors' code
python -m experiments.count_params --variants=mixture_fc --filters=16,32,64,128
"""

from collections.abc import Sequence

from absl import app, flags

from experiments import cli
from probunet_jax import presets
from probunet_jax.model import model_from_config, parameter_counts

COLUMNS = ("unet", "prior_net", "posterior_net", "decoder", "head", "total")
NETWORKS = {"paper": {}, "authors": presets.AUTHORS_NETWORK}

_VARIANTS = flags.DEFINE_list("variants", list(presets.ALL_VARIANTS), "Variants to count.")
_NETWORK = flags.DEFINE_enum(
    "network", "paper", list(NETWORKS), "The paper's network, or the authors' code's."
)
_FILTERS = flags.DEFINE_list(
    "filters", None, "Block widths, last = bottleneck (default: the network's)."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Image height and width.")


def count_table(
    variants: Sequence[str], network: dict, filters: Sequence[int] | None, image_size: int
) -> str:
    """A Markdown table of `parameter_counts` per variant of model fields ``network``: the
    columns of the parts the variants have, '–' where a variant lacks one."""
    if filters is not None:
        network = dict(network, filters=tuple(filters))
    rows = {}
    for variant in variants:
        model = model_from_config(presets.model_config(variant, **network))
        rows[variant] = parameter_counts(model, (image_size, image_size, 1))
    columns = [c for c in COLUMNS if any(c in counts for counts in rows.values())]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    for variant, counts in rows.items():
        cells = [f"{counts[c]:,}" if c in counts else "–" for c in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    filters = None if _FILTERS.value is None else [int(f) for f in _FILTERS.value]
    print(count_table(_VARIANTS.value, NETWORKS[_NETWORK.value], filters, _IMAGE_SIZE.value))


if __name__ == "__main__":
    cli.run(main)
