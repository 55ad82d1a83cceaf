r"""Speed benchmark: train step, sampling and GED; a Markdown table on stdout, JSON with --out.

    python -m experiments.benchmark --batch_sizes=8,32 --out=benchmark.json   # paper config
    python -m experiments.benchmark \
        --configs=experiments/configs/paper.py,experiments/configs/default.py
    python -m experiments.benchmark --batch_sizes=8,32 --peer=peer8.json,peer32.json

Every (config, variant, batch size) runs in a process of its own: see
``probunet_jax.benchmarking`` for what is measured and ``probunet_jax.benchmark_report`` for the
comparison with ``bench_peer.py``'s JSON (the paper code, one file per batch size). The flags
are the fields of ``benchmarking.Options`` (defaults and help there), plus ``--out`` and
``--peer``. The same command runs unchanged on a GPU; no XLA flag is set (README, "Performance").
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Sequence

from absl import app, flags

from experiments import cli
from probunet_jax import benchmark_report, benchmarking, files

_DEFINE = {int: flags.DEFINE_integer, bool: flags.DEFINE_bool}


def define_option_flags() -> dict[str, flags.FlagHolder]:
    """One flag per field of ``benchmarking.Options`` (tuples: comma-separated lists)."""
    types = typing.get_type_hints(benchmarking.Options)
    holders = {}
    for field in dataclasses.fields(benchmarking.Options):
        help_text, default = field.metadata["help"], field.default
        if typing.get_origin(types[field.name]) is tuple:
            holders[field.name] = flags.DEFINE_list(field.name, list(map(str, default)), help_text)
        else:
            holders[field.name] = _DEFINE[types[field.name]](field.name, default, help_text)
    return holders


_OPTIONS = define_option_flags()
_OUT = flags.DEFINE_string("out", None, "Also write the JSON report (strict JSON) to this path.")
_PEER = flags.DEFINE_list("peer", [], "bench_peer.py JSON files (one per batch size) to compare.")


def options_from_flags() -> benchmarking.Options:
    """The validated ``Options`` of the flags; ValueError naming a list flag of bad items."""
    types = typing.get_type_hints(benchmarking.Options)
    values = {}
    for name, holder in _OPTIONS.items():
        item = typing.get_args(types[name])[:1]
        try:
            values[name] = tuple(map(item[0], holder.value)) if item else holder.value
        except ValueError as e:
            raise ValueError(f"--{name} must be a comma-separated list: {e}.") from e
    return benchmarking.Options(**values).validate()


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    options = options_from_flags()
    peers = {path: benchmark_report.load_peer(path) for path in _PEER.value}
    report = benchmarking.run_benchmark(options, log=lambda m: print(m, file=sys.stderr))
    report = benchmark_report.with_peers(report, peers)
    if _OUT.value:
        files.write_json(_OUT.value, benchmarking.finite_or_none(report), allow_nan=False)
    print(benchmark_report.markdown(report), end="")


if __name__ == "__main__":
    cli.run(main)
