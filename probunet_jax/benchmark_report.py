"""The benchmark's report next to the paper code's figures, and as Markdown tables.

``bench_peer.py`` (../shared/bench: the authors' PyTorch code, the same protocol) writes one
JSON document per batch size; :func:`with_peers` adds its figures and the speed ratios
ours/theirs (above 1: ours is faster) to every run of the same filters, image size and batch
size, and to the GED of the same masks. :func:`markdown` renders the tables of the README's
"Performance" section.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

# bench_peer.py's names of the authors' models (ishaanb92/GeneralizedProbabilisticUNet).
PEER_NAMES = {
    "aa": "gpunet_AA",
    "fc": "gpunet_FC",
    "mixture_aa": "gpunet_MixAA",
    "mixture_fc": "gpunet_MixFC",
}
RUN_COLUMNS = (
    "config | variant | batch | train img/s | ours/peer | compile s | GFLOP/image | GFLOP/s "
    "| % fp32 peak | sampling img/s ({samples}/image) | ours/peer | peak host MiB (baseline)"
)
GED_COLUMNS = (
    "GED, {samples} samples × {annotations} annotations, {size}×{size} | ms/image | pairs/s "
    "| Python loop ms/image | ours/loop | peer loop ms/image | ours/peer"
)


def load_peer(path: str) -> dict:
    """The JSON of ``bench_peer.py --out=path``; ValueError if it lacks its summary or config."""
    with open(path) as f:
        peer = json.load(f)
    if not isinstance(peer, dict) or not {"summary", "config"} <= set(peer):
        raise ValueError(f"{path!r} is not bench_peer.py's JSON (no 'summary' and 'config').")
    return peer


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours and theirs else None


def _same_setting(run: dict, setting: dict) -> bool:
    """Whether a run and the peer's ``config`` share filters, image size and batch size."""
    return (
        list(setting["num_filters"]) == run.get("filters")
        and list(setting["input"][1:]) == [run.get("image_size")] * 2
        and setting["batch_size"] == run["batch_size"]
    )


def _peer_of_run(run: dict, peers: dict[str, dict]) -> dict | None:
    """The peer's images/s and the ratios for a run measured alike, or None."""
    name = PEER_NAMES.get(run["variant"])
    for path, peer in peers.items():
        theirs = peer["summary"].get(name)
        if not isinstance(theirs, dict) or not _same_setting(run, peer["config"]):
            continue
        train, sample = theirs.get("train_images_per_s"), theirs.get("infer_images_per_s")
        return dict(
            file=path,
            name=name,
            train_images_per_s=train,
            sample_images_per_s=sample,
            train_ratio=_ratio(run.get("train", {}).get("images_per_s"), train),
            sample_ratio=_ratio(run.get("sample", {}).get("images_per_s"), sample),
        )
    return None


def _peer_of_ged(ged: dict, peers: dict[str, dict]) -> dict | None:
    """The peer's loop GED ms/image and the speed ratio for the same masks, or None."""
    ours = [ged.get("num_samples"), ged.get("num_annotations"), ged.get("image_size")]
    for path, peer in peers.items():
        theirs = peer.get("ged", {})
        loop = theirs.get("ged_loop_reference")
        if loop and [theirs["n_samples"], theirs["n_annotations"], theirs["hw"][0]] == ours:
            ratio = _ratio(loop["ms_per_image"], ged.get("ms_per_image"))
            return dict(file=path, loop_ms_per_image=loop["ms_per_image"], speed_ratio=ratio)
    return None


def with_peers(report: dict, peers: dict[str, dict]) -> dict:
    """``report`` with a ``peer`` entry in every run and in the GED (None where the peer's
    documents ``{path: document}`` hold nothing measured alike)."""
    report = dict(report, runs=[dict(run, peer=_peer_of_run(run, peers)) for run in report["runs"]])
    if "ged" in report:
        report["ged"] = dict(report["ged"], peer=_peer_of_ged(report["ged"], peers))
    return report


# ----------------------------------------------------------------------------- Markdown


def _cell(value: float | None, spec: str = "", suffix: str = "") -> str:
    """``value`` with ``spec``; by default 3 significant digits, no exponent below 10^6."""
    if value is None:
        return "–"
    if not spec and abs(value) >= 1e6:
        return f"{value / 1e6:.3g} M{suffix}"
    return f"{value:{spec or ('.0f' if abs(value) >= 1000 else '.3g')}}{suffix}"


def _table(header: str, rows: Iterable[list[str]]) -> list[str]:
    columns = header.count("|") + 1
    lines = [f"| {header} |", "|---" + "|---:" * (columns - 1) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _failed(error: str) -> str:
    return f"failed: {error.splitlines()[0]}"


def _run_row(run: dict) -> list[str]:
    name = [os.path.basename(run["config"]), run["variant"], str(run["batch_size"])]
    if "error" in run:
        return [*name, _failed(run["error"])]
    train, sample, peer = run.get("train", {}), run.get("sample", {}), run.get("peer") or {}
    peak = train.get("fraction_of_cpu_peak")
    return [
        *name,
        _cell(train.get("images_per_s")),
        _cell(peer.get("train_ratio"), ".2f", "×"),
        _cell(train.get("compile_s"), ".1f"),
        _cell(train.get("gflop_per_image")),
        _cell(train.get("achieved_gflops")),
        _cell(None if peak is None else 100 * peak, ".0f", " %"),
        _cell(sample.get("images_per_s")),
        _cell(peer.get("sample_ratio"), ".2f", "×"),
        f"{run['peak_host_rss_mib']:.0f} ({run['baseline_host_rss_mib']:.0f})",
    ]


def _ged_row(ged: dict) -> list[str]:
    if "error" in ged:
        return [_failed(ged["error"])]
    peer = ged.get("peer") or {}
    return [
        "`metrics.generalized_energy_distance`",
        _cell(ged["ms_per_image"]),
        _cell(ged["pairs_per_s"]),
        _cell(ged.get("loop_ms_per_image")),
        _cell(ged.get("speedup_vs_loop"), ".0f", "×"),
        _cell(peer.get("loop_ms_per_image")),
        _cell(peer.get("speed_ratio"), ".0f", "×"),
    ]


def _environment_line(report: dict) -> str:
    """The device and versions of the first job that ran, the load averages, the protocol."""
    measured = [*report["runs"], report.get("ged", {})]
    env = next((m["environment"] for m in measured if "environment" in m), None)
    where = (
        "no job ran"
        if env is None
        else (
            f"{env['device_kind']} ({env['backend']}, {env['host_cores']} host cores), jax/jaxlib "
            f"{env['jax_version']}/{env['jaxlib_version']}, XLA_FLAGS {env['xla_flags']!r}"
        )
    )
    options = report["options"]
    return (
        f"{report['date']}: {where}; 1-min load average {report['load_average_start'][0]:.2f} at "
        f"the start, {report['load_average_end'][0]:.2f} at the end; medians of "
        f"{options['steps']} train steps and {options['sample_repeats']} sampling calls, "
        "each job in a process of its own; ratios are speeds ours/theirs."
    )


def markdown(report: dict) -> str:
    """The report as Markdown: a line naming the environment, the runs' table, the GED's."""
    options = report["options"]
    runs = RUN_COLUMNS.format(samples=options["num_samples"])
    lines = [_environment_line(report), "", *_table(runs, map(_run_row, report["runs"]))]
    if "ged" in report:
        ged = GED_COLUMNS.format(
            samples=options["num_samples"],
            annotations=options["num_annotations"],
            size=options["ged_image_size"],
        )
        lines += ["", *_table(ged, [_ged_row(report["ged"])])]
    return "\n".join(lines) + "\n"
