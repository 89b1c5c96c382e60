"""One `streamrec retrain` cycle whose outcome reaches Prometheus through a
Pushgateway: what the retrain CronJob and the compose retrain loop run.

    python retrain_and_push.py --pushgateway http://pushgateway:9091 -- streamrec retrain

The cycle is judged as the leader worker's trigger judges it (stream/retrain_trigger.py,
docs/operations.md "the command contract"): the outcome is the last stdout line's
`outcome`; another exit code than 0, or a last line that is not that object, is
`failed`. The counters `streamrec_retrain_total{outcome}` and the histogram
`streamrec_retrain_seconds` (the worker's names and buckets, so the alert rules and
the dashboard read either) live in the Pushgateway: each cycle reads them back, adds
itself and pushes them again. Cycles never overlap (the CronJob forbids it, the loop
runs one at a time), so nothing races; a Pushgateway that lost them starts again from
zero, which Prometheus reads as a counter reset. SIGTERM (a Job's deadline) is handed
to the command, whose exit then counts as failed. Exits with the command's exit code.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamrec.metrics import IngestMetrics

JOB = "streamrec-retrain"
OUTCOMES = ("published", "rejected", "skipped", "failed")
TIMEOUT_S = 10


def run_cycle(command: Sequence[str]) -> tuple[str, int, float]:
    """Run the command, its stdout echoed as it comes and its stderr left to ours;
    its outcome, exit code and seconds."""
    started = time.perf_counter()
    last_line = b""
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        # As a container's PID 1 this process would ignore SIGTERM (a Job's deadline,
        # a stop): hand it to the cycle, whose exit is then counted as failed.
        signal.signal(signal.SIGTERM, lambda signum, _: process.send_signal(signum))
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            if line.strip():
                last_line = line
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        # Killed by signal N: exit 128 + N, as a shell says it.
        code = process.returncode if process.returncode > 0 else 128 - process.returncode
        return "failed", code, seconds
    try:
        outcome = orjson.loads(last_line)["outcome"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        outcome = None
    if outcome not in OUTCOMES:
        print(f"unreadable result, counted as failed: {last_line[-500:]!r}", file=sys.stderr)
        return "failed", 1, seconds
    return str(outcome), 0, seconds


def bucket_bounds() -> list[float]:
    """The upper bounds of the worker's `streamrec_retrain_seconds` buckets."""
    (family,) = IngestMetrics(CollectorRegistry()).retrain_seconds.collect()
    return [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]


def sample_key(name: str, labels: Mapping[str, str]) -> tuple[str, str]:
    """(sample name, its outcome or bucket bound): the Pushgateway writes `le="1"`
    where prometheus_client writes `le="1.0"`, so bounds compare as numbers."""
    if "le" in labels:
        return name, repr(float(labels["le"]))
    return name, labels.get("outcome", "")


def read_pushed(gateway: str) -> dict[tuple[str, str], float]:
    """This job's samples in the Pushgateway, by (sample name, outcome or le)."""
    with urllib.request.urlopen(f"{gateway}/metrics", timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("job") == JOB and sample.name.startswith("streamrec_retrain"):
                found[sample_key(sample.name, sample.labels)] = sample.value
    return found


def exposition(pushed: Mapping[tuple[str, str], float], outcome: str, seconds: float) -> str:
    """The counters and the histogram with this cycle added, in the text format."""
    lines = ["# TYPE streamrec_retrain_total counter"]
    for name in OUTCOMES:
        value = pushed.get(("streamrec_retrain_total", name), 0.0) + (name == outcome)
        lines.append(f'streamrec_retrain_total{{outcome="{name}"}} {value}')
    lines.append("# TYPE streamrec_retrain_seconds histogram")
    for bound in bucket_bounds():
        name = "streamrec_retrain_seconds_bucket"
        value = pushed.get(sample_key(name, {"le": str(bound)}), 0.0) + (seconds <= bound)
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f'{name}{{le="{le}"}} {value}')
    for suffix, added in (("sum", seconds), ("count", 1.0)):
        value = pushed.get((f"streamrec_retrain_seconds_{suffix}", ""), 0.0) + added
        lines.append(f"streamrec_retrain_seconds_{suffix} {value}")
    return "\n".join(lines) + "\n"


def push(gateway: str, outcome: str, seconds: float) -> None:
    body = exposition(read_pushed(gateway), outcome, seconds).encode()
    request = urllib.request.Request(f"{gateway}/metrics/job/{JOB}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushgateway", required=True, help="e.g. http://pushgateway:9091")
    parser.add_argument("command", nargs="+", help="after --: the cycle, e.g. streamrec retrain")
    args = parser.parse_args(argv)
    outcome, exit_code, seconds = run_cycle(args.command)
    try:
        push(args.pushgateway.rstrip("/"), outcome, seconds)
    except OSError as exc:
        # The cycle's own result stands; its count is lost, and the log says so.
        print(f"retrain {outcome}, not pushed to {args.pushgateway}: {exc}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
