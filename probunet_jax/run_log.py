"""A training run's log: scalars to JSONL and TensorBoard, and the rate and ETA of its steps."""

from __future__ import annotations

import json
import os
import time

import jax


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tensorboard``).

    Only process 0 writes. A JSONL line is ``{"step": ..., "split": ..., <name>: value}``.
    """

    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        if self._active:
            from tensorboardX import SummaryWriter

            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self._active:
            return
        self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


class Progress:
    """Training steps/s and images/s between two log points (evaluations and checkpoints left
    out), and the ETA (including the evaluations still to come, each as long as the last)."""

    def __init__(self, step: int, num_steps: int, global_batch: int, eval_every: int):
        self.num_steps, self.global_batch, self.eval_every = num_steps, global_batch, eval_every
        self.step, self.time = step, time.perf_counter()
        self.eval_seconds = 0.0

    def exclude(self, seconds: float, *, evaluation: bool = False) -> None:
        """Leaves ``seconds`` spent outside training steps out of the rate."""
        self.time += seconds
        if evaluation:
            self.eval_seconds = seconds

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self.step) / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        evaluations_left = self.num_steps // self.eval_every - step // self.eval_every
        eta = (self.num_steps - step) / max(rate, 1e-9) + evaluations_left * self.eval_seconds
        return {
            "steps_per_second": rate,
            "images_per_second": rate * self.global_batch,
            "eta_seconds": eta,
        }
