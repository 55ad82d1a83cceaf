"""Speed benchmark: train step, sampling and GED, the same protocol as the paper code's benchmark.

One *job* is a (config file, variant, batch size): it times the project's train step
(``train.make_train_step``: median over ``steps`` timed steps after ``warmup_steps``, each
blocked until ready, the compile time apart, FLOPs from XLA's cost analysis, achieved GFLOP/s
and, on CPU, the fraction of the fp32 peak) and ``sampling.sample_masks`` with ``num_samples``
samples per image on a batch of the same size. The GED job times
``metrics.generalized_energy_distance`` (``num_samples`` x ``num_annotations`` masks per image)
next to :func:`loop_ged`, the paper code's per-pair Python double loop, and checks that they
agree.

Every job runs in a process of its own (:func:`run_isolated`), so its peak host memory
(``ru_maxrss``, the Python and JAX baseline included and reported apart) and the device's peak
memory belong to that job alone; the jobs run one after the other. ``benchmark_report``
compares the report with the paper code's figures and renders it as Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np

from probunet_jax import config as config_lib
from probunet_jax import files, metrics, presets, sampling, sharding, train
from probunet_jax.model import init_variables, model_from_config, parameter_counts

PAPER_CONFIG = "experiments/configs/paper.py"
DEFAULT_VARIANTS = ("aa", "fc", "mixture_aa", "mixture_fc")
# Zen 3 (and any AVX2 + FMA x86 core): 2 FMA units × 8 fp32 lanes × 2 FLOP per FMA.
AVX2_FMA_FLOP_PER_CYCLE = 32
PEAK_FORMULA = f"{{cores}} cores x {AVX2_FMA_FLOP_PER_CYCLE} FLOP/cycle x clock (/proc/cpuinfo)"
# The jitted GED is float32, the loop float64: equal up to float32 rounding.
GED_TOLERANCE = 1e-6


def _option(default, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Options:
    """What to benchmark. Each field carries its default and help: the launcher's flags."""

    configs: tuple[str, ...] = _option(
        (PAPER_CONFIG,), "Config files (FILE or FILE:VARIANT) whose network and batch to time."
    )
    variants: tuple[str, ...] = _option(DEFAULT_VARIANTS, "Variants to time in every config.")
    batch_sizes: tuple[int, ...] = _option((), "Batch sizes to time (default: each config's).")
    steps: int = _option(10, "Timed training steps per job (after warm-up).")
    warmup_steps: int = _option(1, "Untimed training steps after compilation.")
    sample_repeats: int = _option(5, "Timed sampling calls per job (after one untimed call).")
    num_samples: int = _option(16, "Samples per image for sampling and GED.")
    num_annotations: int = _option(4, "Annotations per image for GED.")
    ged_image_size: int = _option(128, "Height and width of the GED masks.")
    ged_batch: int = _option(64, "Images per GED call.")
    ged_repeats: int = _option(20, "Timed GED calls.")
    ged_loop_images: int = _option(4, "Images for the Python-loop GED (0: skip the loop).")
    skip_train: bool = _option(False, "Skip the train-step benchmark.")
    skip_sample: bool = _option(False, "Skip the sampling benchmark.")
    skip_ged: bool = _option(False, "Skip the GED benchmark.")
    seed: int = _option(0, "Seed of the synthetic data and the initialization.")

    def validate(self) -> Options:
        """Returns self; raises ValueError naming the first bad value."""
        if not self.configs or not self.variants:
            raise ValueError(
                f"--configs and --variants must name some, got {self.configs}, {self.variants}."
            )
        for variant in self.variants:
            presets.check_variant(variant)
        positive = ("steps", "sample_repeats", "num_samples", "num_annotations")
        positive += ("ged_image_size", "ged_batch", "ged_repeats")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if min(self.batch_sizes, default=1) < 1:
            raise ValueError(f"--batch_sizes must be >= 1, got {list(self.batch_sizes)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps must be >= 0, got {self.warmup_steps}.")
        if not 0 <= self.ged_loop_images <= self.ged_batch:
            raise ValueError(
                f"--ged_loop_images must be in [0, --ged_batch={self.ged_batch}], "
                f"got {self.ged_loop_images}."
            )
        return self

    @classmethod
    def from_json(cls, values: dict) -> Options:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip (lists -> tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class Job(NamedTuple):
    """One measurement: a config file's network and image size, a variant, a batch size."""

    config: str
    variant: str
    batch_size: int


# ----------------------------------------------------------------------------- environment


def cpu_clock_hz() -> float | None:
    """The clock of the first core in /proc/cpuinfo ("cpu MHz"), or None where unknown."""
    if not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6
    return None


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_peak_gflops() -> float | None:
    """fp32 peak GFLOP/s of the host on the CPU backend: cores × 32 FLOP/cycle × clock."""
    clock = cpu_clock_hz()
    if jax.default_backend() != "cpu" or clock is None:
        return None
    return usable_cores() * AVX2_FMA_FLOP_PER_CYCLE * clock / 1e9


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def device_memory_stats() -> dict | None:
    """``memory_stats()`` of the first device where the backend reports them (GPU), else None."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def environment() -> dict:
    """Device, versions, XLA flags in effect, load average and the CPU's fp32 peak."""
    peak = cpu_peak_gflops()
    return dict(
        backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        python_version=platform.python_version(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        host_cpu=platform.processor() or platform.machine(),
        host_cores=usable_cores(),
        cpu_peak_gflops=peak,
        cpu_peak_formula=None if peak is None else PEAK_FORMULA.format(cores=usable_cores()),
        load_average=list(os.getloadavg()),
    )


# ----------------------------------------------------------------------------- timing helpers


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn``, each blocked until ready."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
    """FLOPs of a compiled executable from XLA's cost analysis, or None where not reported."""
    flops = (compiled.cost_analysis() or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def synthetic_batch(rng: np.random.Generator, batch: int, size: int) -> dict:
    """``{'image': f32 [B, S, S, 1], 'mask': u8 [B, S, S]}`` of smooth blobs."""
    image = rng.uniform(size=(batch, size, size, 1)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] / size
    centre = rng.uniform(0.3, 0.7, size=(batch, 2, 1, 1))
    mask = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 < 0.05).astype(np.uint8)
    return {"image": image, "mask": mask}


# ----------------------------------------------------------------------------- train and sampling


def job_config(job: Job, seed: int) -> ml_collections.ConfigDict:
    """The validated training config of a job: the file's config, the variant, the batch size."""
    config = config_lib.with_variant(config_lib.load_config_file(job.config), job.variant)
    config.train.batch_size = job.batch_size
    config.seed = seed
    config_lib.validate(config)
    return config


def benchmark_train(config: ml_collections.ConfigDict, options: Options) -> tuple[dict, dict]:
    """Times the project's train step; returns its report and the trained variables."""
    mesh = sharding.make_mesh()
    size, batch_size = config.data.image_size, config.train.batch_size
    model, optimizer, state = train.create_train_state(
        config, jax.random.key(options.seed), (size, size, 1), mesh
    )
    step = train.make_train_step(model, optimizer, config, mesh)
    rng = np.random.default_rng(options.seed)
    batch = sharding.shard_batch(synthetic_batch(rng, batch_size, size), mesh)

    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    flops = compiled_flops(compiled)
    holder = {"state": state}

    def one_step():
        holder["state"], step_metrics = compiled(holder["state"], batch)
        return step_metrics

    warmup = time_calls(one_step, options.warmup_steps)
    times = time_calls(one_step, options.steps)
    median = statistics.median(times)
    peak, gflops = cpu_peak_gflops(), None if flops is None else flops / median / 1e9
    report = dict(
        step_source="probunet_jax.train.make_train_step",
        compile_s=compile_s,
        warmup_s=warmup,
        step_s=times,
        median_step_s=median,
        images_per_s=batch_size / median,
        step_gflop=None if flops is None else flops / 1e9,
        gflop_per_image=None if flops is None else flops / 1e9 / batch_size,
        achieved_gflops=gflops,
        fraction_of_cpu_peak=None if peak is None or gflops is None else gflops / peak,
        final_loss=float(jax.device_get(one_step())["loss"]),
    )
    return report, train.variables_of(holder["state"])


def benchmark_sampling(
    config: ml_collections.ConfigDict, options: Options, variables: dict | None
) -> dict:
    """Times ``sampling.sample_masks`` on a batch of ``train.batch_size`` images."""
    model = model_from_config(config.model)
    size, batch_size = config.data.image_size, config.train.batch_size
    if variables is None:
        variables = init_variables(model, jax.random.key(options.seed), (size, size, 1))
    rng = np.random.default_rng(options.seed + 1)
    images = jnp.asarray(synthetic_batch(rng, batch_size, size)["image"])
    key = jax.random.key(options.seed)

    def call():
        return sampling.sample_masks(model, variables, images, key, options.num_samples)

    first_call_s = time_calls(call, 1)[0]
    times = time_calls(call, options.sample_repeats)
    median = statistics.median(times)
    return dict(
        num_samples=options.num_samples,
        first_call_s=first_call_s,
        call_s=times,
        median_call_s=median,
        images_per_s=batch_size / median,
        masks_per_s=batch_size * options.num_samples / median,
    )


def measure_job(job: Job, options: Options) -> dict:
    """The train and sampling reports of one job (in this process)."""
    config = job_config(job, options.seed)
    size = config.data.image_size
    report = dict(
        job._asdict(),
        image_size=size,
        filters=list(config.model.filters),
        parameters=parameter_counts(model_from_config(config.model), (size, size, 1))["total"],
    )
    variables = None
    if not options.skip_train:
        report["train"], variables = benchmark_train(config, options)
    if not options.skip_sample:
        report["sample"] = benchmark_sampling(config, options, variables)
    return report


# ----------------------------------------------------------------------------- GED


def loop_ged(samples: np.ndarray, annotations: np.ndarray, *, unbiased: bool = False):
    """GED and its terms per image by the paper code's Python double loop over mask pairs.

    The benchmark's baseline and the reference of ``metrics.generalized_energy_distance``:
    ``samples`` `[B, S, H, W]`, ``annotations`` `[B, A, H, W]` (nonzero = foreground),
    d = 1 − IoU, two empty masks at distance 0; all pairs, self-pairs included, unless
    ``unbiased`` (then the diversity terms leave them out). Returns a ``metrics.GEDResult`` of
    float64 `[B]` numpy arrays.
    """

    def distance(x, y) -> float:
        x, y = x != 0, y != 0
        union = np.logical_or(x, y).sum()
        return 0.0 if union == 0 else 1.0 - np.logical_and(x, y).sum() / union

    def mean_distance(xs, ys, skip_self: bool) -> float:
        pairs = [
            distance(x, y)
            for i, x in enumerate(xs)
            for j, y in enumerate(ys)
            if not (skip_self and i == j)
        ]
        return float(np.mean(pairs))

    rows = []
    for s, a in zip(samples, annotations, strict=True):
        cross = mean_distance(s, a, False)
        ss, aa = mean_distance(s, s, unbiased), mean_distance(a, a, unbiased)
        rows.append((2 * cross - ss - aa, cross, ss, aa))
    return metrics.GEDResult(*np.asarray(rows, np.float64).reshape(-1, 4).T)


def ged_masks(rng: np.random.Generator, batch: int, count: int, size: int) -> np.ndarray:
    """`[B, count, size, size]` uint8 random blobs, every fifth one empty."""
    yy, xx = np.mgrid[:size, :size] / size
    centre = rng.uniform(0.3, 0.7, size=(batch, count, 2, 1, 1))
    radius = rng.uniform(0.0, 0.25, size=(batch, count, 1, 1)) ** 2
    radius[:, ::5] = 0.0
    dist = (yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2
    return (dist < radius).astype(np.uint8)


def benchmark_ged(options: Options) -> dict:
    """Times the jitted GED and the Python loop; checks that they agree."""
    rng = np.random.default_rng(options.seed + 2)
    size, batch = options.ged_image_size, options.ged_batch
    samples = ged_masks(rng, batch, options.num_samples, size)
    annotations = ged_masks(rng, batch, options.num_annotations, size)
    samples_d, annotations_d = jnp.asarray(samples), jnp.asarray(annotations)

    def jitted():
        return metrics.generalized_energy_distance(samples_d, annotations_d).ged

    first_call_s = time_calls(jitted, 1)[0]
    median = statistics.median(time_calls(jitted, options.ged_repeats))
    s, a = options.num_samples, options.num_annotations
    pairs = s * s + s * a + a * a  # sample-sample, sample-annotation, annotation-annotation
    report = dict(
        images=batch,
        num_samples=s,
        num_annotations=a,
        image_size=size,
        first_call_s=first_call_s,
        median_call_s=median,
        ms_per_image=median / batch * 1e3,
        pairs_per_image=pairs,
        pairs_per_s=pairs * batch / median,
    )
    n = options.ged_loop_images
    if n:
        start = time.perf_counter()
        reference = loop_ged(samples[:n], annotations[:n]).ged
        loop_s = time.perf_counter() - start
        difference = float(np.max(np.abs(np.asarray(jitted())[:n] - reference)))
        report.update(
            loop_images=n,
            loop_ms_per_image=loop_s / n * 1e3,
            speedup_vs_loop=(loop_s / n) / (median / batch),
            max_abs_difference_vs_loop=difference,
            matches_loop=difference <= GED_TOLERANCE,
        )
    return report


# ----------------------------------------------------------------------------- one process a job


def measure(task: dict) -> dict:
    """The report of a task ``{'options': Options fields, 'job': Job fields or None (GED)}``
    measured in this process, with this process's memory and environment (after the work)."""
    baseline = peak_rss_mib()
    options, job = Options.from_json(task["options"]), task["job"]
    report = benchmark_ged(options) if job is None else measure_job(Job(**job), options)
    return dict(
        report,
        process_id=os.getpid(),
        baseline_host_rss_mib=baseline,
        peak_host_rss_mib=peak_rss_mib(),
        device_memory=device_memory_stats(),
        environment=environment(),
    )


def run_isolated(job: Job | None, options: Options) -> dict:
    """:func:`measure` of ``job`` (None: the GED) in a fresh Python process: its report, or
    where the process failed the job's fields, ``error`` (the exit code and the last line of
    stderr) and ``stderr_tail``."""
    task = dict(options=dataclasses.asdict(options), job=None if job is None else job._asdict())
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "report.json")
        command = [sys.executable, "-m", "probunet_jax.benchmarking", json.dumps(task), out]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            error = f"exit code {result.returncode}: {last}"
            return dict(task["job"] or {}, error=error, stderr_tail=result.stderr[-2000:])
        with open(out) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- the run


def jobs(options: Options) -> list[Job]:
    """Configs × variants × batch sizes (a config's own ``train.batch_size`` where none given)."""
    todo = []
    for spec in options.configs:
        own = int(config_lib.load_config_file(spec).train.batch_size)
        todo += [Job(spec, v, b) for v in options.variants for b in options.batch_sizes or (own,)]
    return todo


def run_benchmark(options: Options, log: Callable[[str], None] = lambda _: None) -> dict:
    """Runs every job, then the GED, each in its own process; the JSON-serializable report.

    Every job's config is validated before the first measurement starts. This process does not
    start a JAX backend (on a GPU it would hold the memory the jobs need): each job reports its
    device and environment.
    """
    todo = jobs(options.validate())
    for job in todo:
        job_config(job, options.seed)
    report: dict = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        options=dataclasses.asdict(options),
        memory="peak_host_rss_mib: ru_maxrss of the process that ran only this job "
        "(baseline_host_rss_mib: the same after importing the benchmark and JAX)",
        load_average_start=list(os.getloadavg()),
        runs=[],
    )
    for job in todo:
        log(f"{job.config} {job.variant} batch {job.batch_size}")
        report["runs"].append(run_isolated(job, options))
    if not options.skip_ged:
        log("GED")
        report["ged"] = run_isolated(None, options)
    report["load_average_end"] = list(os.getloadavg())
    return report


def finite_or_none(value):
    """``value`` with every non-finite float (NaN, inf) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


if __name__ == "__main__":
    files.write_json(sys.argv[2], measure(json.loads(sys.argv[1])))
