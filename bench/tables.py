"""Markdown tables and timing helpers shared by the bench scripts (not part of the package)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time

import torch

#: Other processes using more cores than this make a timing row suspect.
QUIET_CORES = 0.25


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; floats are expected to be formatted by the caller."""
    text = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in text) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(text[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(row) for row in text[1:]])


def machine() -> str:
    """One line saying what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}"



class OtherCpuUse:
    """How many cores other processes kept busy while a benchmark ran (Linux /proc/stat).

    On 2 cores a second busy torch process slows a 2-thread benchmark down several times
    (its threads wait on each other), so every table says how quiet the machine was.
    """

    def __init__(self) -> None:
        self.begin = self.end = None

    def start(self) -> "OtherCpuUse":
        self.begin = self._sample()
        return self

    def stop(self) -> None:
        self.end = self._sample()

    def __enter__(self) -> "OtherCpuUse":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle and iowait
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()

    @property
    def cores(self) -> float | None:
        if self.begin is None or self.end is None:
            return None
        (b0, o0, t0), (b1, o1, t1) = self.begin, self.end
        return max(0.0, (b1 - b0) - (o1 - o0)) / max(t1 - t0, 1e-9)

    def note(self) -> str:
        cores = self.cores
        if cores is None:
            return "CPU use of other processes: unknown (no /proc/stat)"
        text = f"other processes kept {cores:.2f} cores busy on average while this ran"
        if cores > QUIET_CORES:
            text += (" -- WARNING: the machine was not quiet; these timings are inflated and not "
                     "comparable with a quiet run")
        return text


def code_version() -> str:
    """The commit measured, and a fingerprint of uncommitted changes under backend/ (the
    package is installed editable, so a run measures the working tree as it was at import)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True,  # noqa: E731
                                        check=True).stdout
        commit = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "backend")
    except (OSError, subprocess.CalledProcessError):
        return "code: unknown (not a git checkout)"
    if not diff:
        return f"code: {commit}"
    return f"code: {commit} + uncommitted backend/ changes (diff {hashlib.sha1(diff.encode()).hexdigest()[:8]})"


def wait_until_quiet(max_wait_s: float, threshold: float = QUIET_CORES, window_s: float = 5.0) -> None:
    """Wait (up to max_wait_s) until other processes use under `threshold` cores for a
    `window_s` window, so the next measurement starts on a quiet machine."""
    deadline = time.monotonic() + max_wait_s
    while True:
        with OtherCpuUse() as probe:
            time.sleep(window_s)
        if probe.cores is None or probe.cores < threshold:
            return
        if time.monotonic() >= deadline:
            print(f"  machine still busy ({probe.cores:.2f} cores used by others); measuring anyway",
                  file=sys.stderr)
            return
        print(f"  waiting for a quiet machine ({probe.cores:.2f} cores used by others) ...", file=sys.stderr)
