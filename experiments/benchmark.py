r"""Speed benchmark: train step, sampling and GED, printed as one JSON document.

Usage (the paper's configuration: 128×128 images, filters 32/64/128 + 512, Table 3 latents)::

    python -m experiments.benchmark --out=benchmark.json
    python -m experiments.benchmark --variants=aa --batch_size=8 --steps=10 --skip_ged

Per variant it reports:

* ``train``: images/s of the project's train step (``probunet_jax.train.make_train_step``, the
  median over ``--steps`` timed steps after ``--warmup_steps``, each blocked with
  ``block_until_ready``), the compile time apart, the step's FLOPs from XLA's cost analysis,
  the achieved GFLOP/s and, on CPU, the fraction of the fp32 peak (see ``cpu_peak_flops``);
* ``sample``: images/s of ``sampling.sample_masks`` with ``--num_samples`` (16) samples per image.

Once per run: ``ged``: ms per image and IoU pairs/s of ``metrics.generalized_energy_distance``
for 16 samples × 4 annotations, next to the per-pair Python double loop of the paper's code on
a few images, with the speed ratio and the largest difference of the values; and the
environment: device, JAX/jaxlib versions, XLA flags in effect, load average, peak host RSS and
device memory statistics where the backend reports them.

The same command runs unchanged on a GPU. XLA:CPU options were measured and none is set by
default (README, "Performance"): jaxlib 0.10's defaults already run convolutions through YNNPACK.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform as host_platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from absl import app, flags

# Must run before JAX initializes a backend.

DEFAULT_VARIANTS = ("aa", "fc", "mixture_aa", "mixture_fc")

_VARIANTS = flags.DEFINE_list("variants", list(DEFAULT_VARIANTS), "Model variants to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Training batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Height and width of the images.")
_FILTERS = flags.DEFINE_list("filters", None, "Block widths (default: the paper's 32,64,128,512).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps per variant (after warm-up).")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 1, "Untimed steps after compilation.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 32, "Images per sampling call.")
_SAMPLE_REPEATS = flags.DEFINE_integer("sample_repeats", 5, "Timed sampling calls per variant.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Samples per image for sampling and GED.")
_NUM_ANNOTATIONS = flags.DEFINE_integer("num_annotations", 4, "Annotations per image for GED.")
_GED_BATCH = flags.DEFINE_integer("ged_batch", 64, "Images per GED call.")
_GED_REPEATS = flags.DEFINE_integer("ged_repeats", 20, "Timed GED calls.")
_GED_LOOP_IMAGES = flags.DEFINE_integer("ged_loop_images", 4, "Images for the Python-loop GED.")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Skip the train-step benchmark.")
_SKIP_SAMPLE = flags.DEFINE_bool("skip_sample", False, "Skip the sampling benchmark.")
_SKIP_GED = flags.DEFINE_bool("skip_ged", False, "Skip the GED benchmark.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and the initialization.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON document to this path.")

# Zen 3 (and any AVX2 + FMA x86 core): 2 FMA units × 8 fp32 lanes × 2 FLOP per FMA.
AVX2_FMA_FLOP_PER_CYCLE = 32
# The jitted GED is float32, the loop float64: equal up to float32 rounding.
GED_TOLERANCE = 1e-6
PEAK_FORMULA = f"{{cores}} cores x {AVX2_FMA_FLOP_PER_CYCLE} FLOP/cycle x clock (/proc/cpuinfo)"


@dataclasses.dataclass(frozen=True)
class Options:
    """What to benchmark (the command's flags)."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    batch_size: int = 32
    image_size: int = 128
    filters: tuple[int, ...] | None = None
    steps: int = 10
    warmup_steps: int = 1
    sample_batch: int = 32
    sample_repeats: int = 5
    num_samples: int = 16
    num_annotations: int = 4
    ged_batch: int = 64
    ged_repeats: int = 20
    ged_loop_images: int = 4
    skip_train: bool = False
    skip_sample: bool = False
    skip_ged: bool = False
    seed: int = 0

    def validate(self) -> Options:
        """Returns self; raises ValueError naming the first bad value."""
        from probunet_jax import presets

        unknown = [v for v in self.variants if v not in presets.VARIANTS]
        if not self.variants or unknown:
            raise ValueError(
                f"--variants must name some of {list(presets.VARIANTS)}, got {list(self.variants)}."
            )
        for name in ("batch_size", "image_size", "steps", "sample_batch", "sample_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("num_samples", "num_annotations", "ged_batch", "ged_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0 or self.ged_loop_images < 0:
            raise ValueError("--warmup_steps and --ged_loop_images must be >= 0.")
        if self.ged_loop_images > self.ged_batch:
            raise ValueError(
                f"--ged_loop_images ({self.ged_loop_images}) must be <= --ged_batch "
                f"({self.ged_batch})."
            )
        if self.filters is not None and (not self.filters or min(self.filters) < 1):
            raise ValueError(f"--filters must be positive block widths, got {self.filters}.")
        factor = 2 ** (len(self.filters or presets.PAPER_FILTERS) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"--image_size must be divisible by {factor} for these filters, "
                f"got {self.image_size}."
            )
        return self


# ----------------------------------------------------------------------------- environment


def cpu_clock_hz() -> float | None:
    """The clock of the first core in /proc/cpuinfo ("cpu MHz"), or None where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) * 1e6
    except OSError:
        return None
    return None


def cpu_peak_flops(num_cores: int, clock_hz: float | None) -> float | None:
    """fp32 peak of the host: cores × 32 FLOP/cycle (AVX2: 2 FMA units × 8 lanes × 2) × clock."""
    if clock_hz is None or num_cores < 1:
        return None
    return num_cores * AVX2_FMA_FLOP_PER_CYCLE * clock_hz


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def device_memory_stats() -> dict | None:
    """``memory_stats()`` of the first device where the backend reports them (GPU), else None."""
    import jax

    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def environment() -> dict:
    """Device, versions, XLA flags in effect, load average and the CPU's fp32 peak."""
    import jax
    import jaxlib

    device = jax.devices()[0]
    backend = jax.default_backend()
    clock = cpu_clock_hz() if backend == "cpu" else None
    cores = usable_cores()
    peak = cpu_peak_flops(cores, clock) if backend == "cpu" else None
    return dict(
        backend=backend,
        device_kind=device.device_kind,
        device_count=jax.device_count(),
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        python_version=host_platform.python_version(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        host_cpu=host_platform.processor() or host_platform.machine(),
        host_cores=cores,
        cpu_clock_ghz=None if clock is None else clock / 1e9,
        cpu_peak_gflops=None if peak is None else peak / 1e9,
        cpu_peak_formula=None if peak is None else PEAK_FORMULA.format(cores=cores),
        load_average=list(os.getloadavg()),
    )


# ----------------------------------------------------------------------------- timing helpers


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn``, each blocked until ready."""
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def compiled_flops(compiled) -> float | None:
    """FLOPs of a compiled executable from XLA's cost analysis, or None where not reported."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def synthetic_batch(rng, batch: int, size: int) -> dict:
    """``{'image': f32 [B, S, S, 1], 'mask': u8 [B, S, S]}`` of smooth blobs."""
    import numpy as np

    image = rng.uniform(size=(batch, size, size, 1)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] / size
    centre = rng.uniform(0.3, 0.7, size=(batch, 2, 1, 1))
    mask = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 < 0.05).astype(np.uint8)
    return {"image": image, "mask": mask}


# ----------------------------------------------------------------------------- train step


def training_config(variant: str, options: Options):
    """The training config the project's train step needs (``config.model``, ``config.train``)."""
    import ml_collections

    from probunet_jax import presets

    overrides = {} if options.filters is None else {"filters": tuple(options.filters)}
    config = ml_collections.ConfigDict()
    config.seed = options.seed
    config.model = presets.model_config(variant, **overrides)
    config.train = ml_collections.ConfigDict(
        dict(batch_size=options.batch_size, learning_rate=1e-4)
    )
    return config


def benchmark_train(variant: str, options: Options) -> tuple[dict, dict]:
    """Times the project's train step; returns its report and the trained variables."""
    import jax
    import numpy as np

    from probunet_jax import sharding, train

    config = training_config(variant, options)
    mesh = sharding.make_mesh()
    size = options.image_size
    model, optimizer, state = train.create_train_state(
        config, jax.random.key(options.seed), (size, size, 1), mesh
    )
    step = train.make_train_step(model, optimizer, config, mesh)
    rng = np.random.default_rng(options.seed)
    batch = sharding.shard_batch(synthetic_batch(rng, options.batch_size, size), mesh)

    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    flops = compiled_flops(compiled)

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    warmup = time_calls(one_step, options.warmup_steps)
    times = time_calls(one_step, options.steps)
    metrics = jax.device_get(one_step())
    median = statistics.median(times)
    report = dict(
        step_source="probunet_jax.train.make_train_step",
        batch_size=options.batch_size,
        compile_s=compile_s,
        warmup_s=warmup,
        step_s=times,
        median_step_s=median,
        images_per_s=options.batch_size / median,
        step_gflop=None if flops is None else flops / 1e9,
        gflop_per_image=None if flops is None else flops / 1e9 / options.batch_size,
        achieved_gflops=None if flops is None else flops / median / 1e9,
        final_loss=float(metrics["loss"]),
        load_average=list(os.getloadavg()),
    )
    return report, train.variables_of(holder["state"])


# ----------------------------------------------------------------------------- sampling


def benchmark_sampling(variant: str, options: Options, variables: dict | None) -> dict:
    """Times ``sampling.sample_masks`` (U-Net and prior once, the head per sample)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from probunet_jax import sampling
    from probunet_jax.model import init_variables, model_from_config

    config = training_config(variant, options)
    model = model_from_config(config.model)
    size = options.image_size
    if variables is None:
        variables = init_variables(model, jax.random.key(options.seed), (size, size, 1))
    rng = np.random.default_rng(options.seed + 1)
    images = jnp.asarray(synthetic_batch(rng, options.sample_batch, size)["image"])
    key = jax.random.key(options.seed)

    start = time.perf_counter()
    masks = sampling.sample_masks(model, variables, images, key, options.num_samples)
    jax.block_until_ready(masks)
    first_call_s = time.perf_counter() - start
    times = time_calls(
        lambda: sampling.sample_masks(model, variables, images, key, options.num_samples),
        options.sample_repeats,
    )
    median = statistics.median(times)
    return dict(
        sample_batch=options.sample_batch,
        num_samples=options.num_samples,
        first_call_s=first_call_s,
        call_s=times,
        median_call_s=median,
        images_per_s=options.sample_batch / median,
        masks_per_s=options.sample_batch * options.num_samples / median,
        load_average=list(os.getloadavg()),
    )


# ----------------------------------------------------------------------------- GED


def loop_ged(samples, annotations) -> list[float]:
    """GED per image by the paper code's Python double loop over pairs (d = 1 − IoU).

    ``samples`` `[B, S, H, W]`, ``annotations`` `[B, A, H, W]` numpy; all pairs, self-pairs
    included; two empty masks have distance 0.
    """
    import numpy as np

    def distance(x, y) -> float:
        x, y = x.astype(bool), y.astype(bool)
        union = np.logical_or(x, y).sum()
        return 0.0 if union == 0 else 1.0 - np.logical_and(x, y).sum() / union

    def mean_distance(xs, ys) -> float:
        return float(np.mean([[distance(x, y) for y in ys] for x in xs]))

    return [
        2 * mean_distance(s, a) - mean_distance(s, s) - mean_distance(a, a)
        for s, a in zip(samples, annotations, strict=True)
    ]


def ged_masks(rng, batch: int, count: int, size: int):
    """`[B, count, size, size]` uint8 random blobs, some of them empty."""
    import numpy as np

    yy, xx = np.mgrid[:size, :size] / size
    centre = rng.uniform(0.3, 0.7, size=(batch, count, 2, 1, 1))
    radius = rng.uniform(0.0, 0.25, size=(batch, count, 1, 1)) ** 2
    radius[:, ::5] = 0.0  # empty masks
    dist = (yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2
    return (dist < radius).astype(np.uint8)


def benchmark_ged(options: Options) -> dict:
    """Times the jitted GED and the Python loop; checks that they agree."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from probunet_jax import metrics

    rng = np.random.default_rng(options.seed + 2)
    size, batch = options.image_size, options.ged_batch
    samples = ged_masks(rng, batch, options.num_samples, size)
    annotations = ged_masks(rng, batch, options.num_annotations, size)
    samples_d, annotations_d = jnp.asarray(samples), jnp.asarray(annotations)

    def jitted():
        return metrics.generalized_energy_distance(samples_d, annotations_d).ged

    start = time.perf_counter()
    values = np.asarray(jax.block_until_ready(jitted()))
    first_call_s = time.perf_counter() - start
    times = time_calls(jitted, options.ged_repeats)
    median = statistics.median(times)
    s, a = options.num_samples, options.num_annotations
    pairs = s * s + s * a + a * a  # sample-sample, sample-annotation, annotation-annotation
    report = dict(
        images=batch,
        num_samples=options.num_samples,
        num_annotations=options.num_annotations,
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
        reference = loop_ged(samples[:n], annotations[:n])
        loop_s = time.perf_counter() - start
        difference = float(np.max(np.abs(values[:n] - np.asarray(reference))))
        report.update(
            loop_images=n,
            loop_ms_per_image=loop_s / n * 1e3,
            speedup_vs_loop=(loop_s / n) / (median / batch),
            max_abs_difference_vs_loop=difference,
            matches_loop=difference <= GED_TOLERANCE,
        )
    return report


# ----------------------------------------------------------------------------- the document


def run_benchmark(options: Options, log: Callable[[str], None] = lambda _: None) -> dict:
    """Runs everything ``options`` asks for; returns the JSON-serializable report."""
    options.validate()
    from probunet_jax import presets
    from probunet_jax.model import model_from_config, parameter_counts

    env = environment()
    report: dict = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        options=dataclasses.asdict(options),
        filters=list(options.filters or presets.PAPER_FILTERS),
        environment=env,
        variants={},
    )
    peak = env["cpu_peak_gflops"]
    size = options.image_size
    for variant in options.variants:
        config = training_config(variant, options)
        counts = parameter_counts(model_from_config(config.model), (size, size, 1))
        entry: dict = dict(parameters=counts["total"])
        variables = None
        if not options.skip_train:
            log(f"{variant}: train step")
            entry["train"], variables = benchmark_train(variant, options)
            gflops = entry["train"]["achieved_gflops"]
            entry["train"]["fraction_of_cpu_peak"] = (
                None if peak is None or gflops is None else gflops / peak
            )
        if not options.skip_sample:
            log(f"{variant}: sampling")
            entry["sample"] = benchmark_sampling(variant, options, variables)
        report["variants"][variant] = entry
    if not options.skip_ged:
        log("GED")
        report["ged"] = benchmark_ged(options)
    report["peak_host_rss_mib"] = peak_rss_mib()
    report["device_memory"] = device_memory_stats()
    report["load_average_end"] = list(os.getloadavg())
    return report


def write_atomically(text: str, path: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        f.write(text)
        temporary = f.name
    os.replace(temporary, path)


def finite_or_none(value):
    """``value`` with every non-finite float (NaN, inf) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def options_from_flags() -> Options:
    """The ``Options`` of the command-line flags."""
    try:
        filters = None if _FILTERS.value is None else tuple(int(f) for f in _FILTERS.value)
    except ValueError as e:
        raise ValueError(f"--filters must be comma-separated integers: {e}") from e
    return Options(
        variants=tuple(_VARIANTS.value),
        batch_size=_BATCH_SIZE.value,
        image_size=_IMAGE_SIZE.value,
        filters=filters,
        steps=_STEPS.value,
        warmup_steps=_WARMUP_STEPS.value,
        sample_batch=_SAMPLE_BATCH.value,
        sample_repeats=_SAMPLE_REPEATS.value,
        num_samples=_NUM_SAMPLES.value,
        num_annotations=_NUM_ANNOTATIONS.value,
        ged_batch=_GED_BATCH.value,
        ged_repeats=_GED_REPEATS.value,
        ged_loop_images=_GED_LOOP_IMAGES.value,
        skip_train=_SKIP_TRAIN.value,
        skip_sample=_SKIP_SAMPLE.value,
        skip_ged=_SKIP_GED.value,
        seed=_SEED.value,
    ).validate()


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    options = options_from_flags()
    report = run_benchmark(options, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(finite_or_none(report), indent=2, allow_nan=False)
    print(text)
    if _OUT.value:
        write_atomically(text + "\n", _OUT.value)


if __name__ == "__main__":
    app.run(main)
