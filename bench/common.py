"""What every benchmark shares: the machine description, report writing and a swap
without training."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import psutil

from devtools.devstack import DevStack
from streamrec import registry
from streamrec.settings import Settings

REPORTS = Path(__file__).resolve().parent / "reports"


class ScratchStack:
    """A dev stack (broker + Redis) in a new temporary home for one benchmark run.
    `settings` point at it; the home is removed afterwards unless the run raised or
    set `keep` (its logs are worth reading then)."""

    def __init__(self, name: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=f"streamrec-bench-{name}-"))
        self.stack = DevStack(self.home)
        self.keep = False

    def __enter__(self) -> Settings:
        status = self.stack.up()
        return Settings(
            home=self.home,
            kafka_bootstrap=status.kafka_bootstrap or "",
            redis_url=status.redis_url or "",
            log_level="WARNING",
        )

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stack.down()
        if kind is not None or self.keep:
            print(f"logs kept in {self.home}", file=sys.stderr)
        else:
            shutil.rmtree(self.home, ignore_errors=True)


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "os": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit_run(),
        "reference_loop_ms": reference_loop_ms(),
    }


def run_record(
    command: str, quick: bool, limit: int | None, load_before: tuple[float, float, float]
) -> dict[str, object]:
    """What a replay report says of its run: the exact command (with `--quick` or
    `--limit N`), the load average before and after, and the machine."""
    return {
        "quick": quick,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "command": command + (" --quick" if quick else f" --limit {limit}" if limit else ""),
        "machine": machine(),
    }


def reference_loop_ms() -> float:
    """A yardstick for the cores' speed on the day: the best of 5 runs of one million
    Python additions. The same VM kind has measured 2-3x apart from day to day."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for n in range(1_000_000):
            total += n
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine_line(m: dict[str, Any]) -> str:
    """The machine a report's figures come from, as one sentence."""
    reference = m.get("reference_loop_ms")
    speed = f"; reference loop {reference} ms (`bench/common.py`)" if reference else ""
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}; "
        f"{m['date']}, commit {m['commit']}{speed}."
    )


def _commit_run() -> str:
    """The commit the benchmark's code came from: HEAD when this module was imported
    (the run's start), and HEAD now as well when a commit landed during the run."""
    now = _git_commit()
    return _STARTED_AT if now == _STARTED_AT else f"{_STARTED_AT} (HEAD {now} when written)"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, cwd=REPORTS.parent,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def write_json(name: str, payload: dict[str, object]) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"{name}.json"
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


def republish(
    root: Path,
    version: str,
    replace: Mapping[str, Path] | None = None,
    make_current: bool = True,
    index: Mapping[str, Any] | None = None,
) -> registry.Manifest:
    """A new version holding `version`'s files (some `replace`d) under its manifest's
    description (its index section replaced by `index`, if given): a swap without
    training."""
    manifest = registry.read_manifest(root, version)
    with tempfile.TemporaryDirectory(dir=root, prefix=".republish-") as staging:
        staged = Path(staging) / "bundle"
        shutil.copytree(root / version, staged)
        (staged / registry.MANIFEST).unlink()
        for name, path in (replace or {}).items():
            shutil.copyfile(path, staged / name)
        return registry.publish(
            root, staged, parent=version, data_window=manifest.data_window,
            metrics=manifest.metrics, encoder=manifest.encoder, ranker=manifest.ranker,
            index=index or manifest.index, training=manifest.training,
            make_current=make_current,
        )  # fmt: skip


def in_process_report_head(
    title: str, command: str, load: tuple[float, float], intro: str
) -> list[str]:
    """The first lines of an in-process bench's markdown report: its title, the
    command, the machine and load, and what the tables hold."""
    return [
        f"# {title}",
        "",
        f"Command: `{command}`. {machine_line(machine())} "
        f"Load average before/after: {load[0]:.1f} / {load[1]:.1f}.",
        "",
        intro,
        "",
    ]


def dataset_table_head(result: dict[str, Any], columns: Sequence[str]) -> list[str]:
    """A dataset's section heading, its description and case count, and the header
    of its table with these columns."""
    return [
        f"## {result['dataset']}",
        "",
        f"{result['describe']}; {result['cases']:,} cases.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]


_STARTED_AT = _git_commit()


def latency_cdf(ax: Any, samples_ms: Sequence[float], **style: Any) -> Any:
    """One latency CDF on `ax` (a matplotlib Axes); returns its line."""
    import numpy as np

    ms = np.sort(np.asarray(samples_ms, dtype=float))
    return ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), **style)[0]


def latency_axes(
    ax: Any,
    title: str,
    xlabel: str = "latency from scheduled send (ms, log)",
    ylabel: str = "share of requests ≤ x",
) -> None:
    """The latency CDF axes every report draws: log milliseconds labelled as plain
    numbers (the minor ticks' '2×10⁰' labels ran into each other), the p99 line."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.set_title(title)
