"""Model-server benchmark: an open-loop load generator in its own process against
`streamrec serve`, at fixed rates; latency, errors, per-stage time, p99 during a
model swap and event-to-effect delay. Writes bench/reports/serve.{md,json,png}."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console

from bench.common import REPORTS, machine, machine_line, write_json
from devtools.devstack import DevStack, free_port
from devtools.processes import ServiceProcess
from model_server.recommender import STAGES
from stream.vectors import VectorRefresher
from streamrec import registry
from streamrec.client import RecommenderClient
from streamrec.events import Event, EventType
from streamrec.loaded import ModelHolder
from streamrec.metrics import IngestMetrics
from streamrec.producer import EventProducer
from streamrec.settings import Settings
from streamrec.state import StateStore
from streamrec.topics import ensure_topics

console = Console(stderr=True)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yoochoose1_64"
STAGE_COLUMNS = (*STAGES, "server total recommend")
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Plan:
    rates: tuple[int, ...]
    seconds: float
    server_counts: tuple[int, ...]
    users: int
    effect_samples: int
    train_sessions: int  # only when no current model exists to copy


QUICK = Plan(rates=(250,), seconds=10, server_counts=(1,), users=2000, effect_samples=20,
             train_sessions=10_000)  # fmt: skip
FULL = Plan(rates=(250, 500, 1000, 2000), seconds=30, server_counts=(1, 2), users=10_000,
            effect_samples=100, train_sessions=0)  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    home = Path(tempfile.mkdtemp(prefix="streamrec-bench-serve-"))
    stack = DevStack(home)
    status = stack.up()
    settings = Settings(
        home=home,
        kafka_bootstrap=status.kafka_bootstrap or "",
        redis_url=status.redis_url or "",
        registry=home / "registry",
        app_id="bench-serve",
        topic_clicks="bench-serve.clicks",
        topic_purchases="bench-serve.purchases",
        serve_port=free_port(),
        worker_web_port=free_port(),
        registry_poll_s=0.5,
        log_level="WARNING",
    )
    runs: list[dict[str, Any]] = []
    swap: dict[str, Any] = {"errors": 0}
    try:
        model_source = prepare_model(settings, plan)
        users = asyncio.run(seed_users(settings, plan.users))
        for servers in plan.server_counts:
            with serving(settings, servers) as (url, server):
                for rate in plan.rates:
                    before, cpu_before = scrape(url), server_cpu_s(server)
                    load_before = os.getloadavg()[0]
                    result = open_loop(url, users, rate, plan.seconds)
                    served = result["sent"] - result["errors"]
                    result.update(
                        servers=servers,
                        # 1-minute load average before and after: the other work on the cores
                        load_avg=(round(load_before, 2), round(os.getloadavg()[0], 2)),
                        stages_ms=stage_means(before, scrape(url)),
                        server_cpu_ms_per_request=round(
                            (server_cpu_s(server) - cpu_before) * 1000 / max(served, 1), 3
                        ),
                    )
                    runs.append(result)
                    console.print(_line(result))
                if servers == 1:
                    # At the highest rate one server held (no errors, 95% achieved): a
                    # swap on an overloaded server says nothing about swapping.
                    swap_rate = _held_rate(runs, plan.rates[0])
                    swap = swap_run(url, settings, users, swap_rate, plan.seconds)
                    steady = [r for r in runs if r["servers"] == 1 and r["rate"] == swap_rate]
                    swap["steady_p99_ms"] = steady[0]["p99_ms"] if steady else None
                    console.print(f"swap: {_line(swap)}")
                    effect = event_to_effect(url, settings, users, plan.effect_samples)
    finally:
        stack.down()
        if any(r["errors"] for r in [*runs, swap]):
            console.print(f"[red]errors[/red]: the server's log is kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    report = {
        "runs": runs,
        "swap_p99_ms": swap["p99_ms"],
        "swap_errors": swap["errors"],
        "swap_rate": swap["rate"],
        "swap_published_after_s": swap.get("published_after_s"),
        "swap_swapped_after_s": swap.get("swapped_after_s"),
        "swap_steady_p99_ms": swap.get("steady_p99_ms"),
        "event_to_effect_p50_ms": effect["p50_ms"],
        "event_to_effect_p99_ms": effect["p99_ms"],
        "event_to_effect_samples": effect["samples"],
        "model": model_source,
        "users": len(users),
        "quick": quick,
        "command": f"streamrec bench serve{' --quick' if quick else ''}",
        "machine": machine(),
    }
    # A quick run writes its own report, never over the full one the docs cite.
    stem = "serve-quick" if quick else "serve"
    write_json(stem, {**report, "runs": [_without_samples(r) for r in runs]})
    _plot(runs, stem)
    _write_markdown(report, stem)
    return report


def prepare_model(settings: Settings, plan: Plan) -> dict[str, Any]:
    """Copy the user's current model when there is one (the yoochoose1_64 bundle),
    else train a small one on a slice of yoochoose1_64."""
    mine = Settings()
    current = registry.current_version(mine.registry) if mine.registry.is_dir() else None
    if current is not None:
        shutil.copytree(mine.registry / current, settings.registry / current)
        registry.set_current(settings.registry, current)
        manifest = registry.read_manifest(settings.registry, current)
        return {
            "version": current,
            "items": manifest.index.get("n_items"),
            "source": "copied",
            "candidates": manifest.retrieval_candidates,
            "trained_on": manifest.data_window.get("source"),
            "encoder_epochs": len(manifest.training.get("encoder_epochs", [])),
        }
    from itertools import islice

    from retrain.data import load_sequences
    from retrain.publish import publish_models
    from retrain.train_encoder import EncoderTraining
    from retrain.training import TrainPlan, train_models

    sessions = plan.train_sessions or 100_000
    console.print(f"no current model in {mine.registry}: training on {sessions:,} sessions")
    sequences = list(islice(load_sequences(DATA, "srgnn"), sessions))
    # The benchmark model: C = 200 (streamrec's default is 100).
    train_plan = replace(
        TrainPlan(), dim=64, candidates=200, encoder=EncoderTraining(epochs=2, negatives=2048)
    )
    models = train_models(sequences, train_plan, progress=False)
    manifest = publish_models(
        models, settings.registry, train_plan, {"source": str(DATA)}, None, settings.hnsw_threshold
    )
    return {
        "version": manifest.version,
        "items": len(models.vocab),
        "source": "trained",
        "candidates": manifest.retrieval_candidates,
        "trained_on": str(DATA),
        "encoder_epochs": train_plan.encoder.epochs,
    }


async def seed_users(settings: Settings, count: int) -> list[str]:
    """Users with recent clicks on catalogue items and their cached vectors, as the
    stream would leave them."""
    version = registry.current_version(settings.registry)
    assert version is not None
    vocab = orjson.loads((settings.registry / version / "vocab.json").read_bytes())["item_ids"]
    rng = np.random.default_rng(0)
    now_ms = int(time.time() * 1000)
    events = []
    for user in range(count):
        for step, row in enumerate(rng.integers(0, len(vocab), size=int(rng.integers(3, 20)))):
            kind = EventType.PURCHASE if rng.random() < 0.05 else EventType.CLICK
            events.append(Event(f"b{user}-{step}", f"user-{user}", vocab[row], kind, now_ms + step))
    users = [f"user-{user}" for user in range(count)]
    store = StateStore(settings)
    try:
        for start in range(0, len(events), 5000):
            await store.apply_events(events[start : start + 5000])
        # As the stream worker leaves them (STREAMREC_WORKER_REFRESH_VECTORS, on by
        # default): each user's vector cached for the current version.
        metrics = IngestMetrics(CollectorRegistry())
        holder = ModelHolder(settings.registry, metrics)
        await holder.load()
        refresher = VectorRefresher(store, holder, metrics)
        for start in range(0, count, 500):
            await refresher.refresh(users[start : start + 500])
    finally:
        await store.close()
    return users


def server_cpu_s(server: ServiceProcess) -> float:
    """CPU seconds of the server process and its worker processes."""
    import psutil

    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


@contextmanager
def serving(settings: Settings, servers: int) -> Iterator[tuple[str, ServiceProcess]]:
    settings = settings.model_copy(update={"serve_workers": servers})
    process = ServiceProcess(settings, ["serve"], settings.home / "serve.log", settings.serve_port)
    process.start()
    try:
        process.wait_ready()
        yield f"http://127.0.0.1:{settings.serve_port}", process
    finally:
        process.stop()


LOADGEN_SOURCE = Path(__file__).with_name("loadgen.c")


@functools.cache
def loadgen_binary() -> Path | None:
    """bench/loadgen.c compiled once per process into a folder of its own (0700, a name
    no one can guess, removed at exit), or None without a C compiler: the aiohttp
    generator then stands in, at a higher CPU cost. Never a binary found at a fixed
    path in the shared temporary folder: anyone on the machine could put one there
    first, and we would run it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    folder = tempfile.TemporaryDirectory(prefix="streamrec-loadgen-")
    _BUILD_FOLDERS.append(folder)
    target = Path(folder.name) / "loadgen"
    subprocess.run([compiler, "-O2", "-o", str(target), str(LOADGEN_SOURCE)], check=True)
    return target


# Held until the process exits (TemporaryDirectory removes its folder then).
_BUILD_FOLDERS: list[tempfile.TemporaryDirectory[str]] = []


def open_loop(url: str, users: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent on a fixed schedule from another process, whatever the answers do;
    latency counts from the scheduled time, so queueing shows (no coordinated omission)."""
    binary = loadgen_binary()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if binary is None:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            latencies, errors, sent, elapsed = pool.apply(_generate, (url, users, rate, seconds))
        generator = "aiohttp"
    else:
        latencies, errors, sent, elapsed = _generate_in_c(binary, url, users, rate, seconds)
        generator = "C"
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = _summary(rate, np.array(latencies), sum(errors.values()), sent, elapsed)
    result["error_kinds"] = dict(errors)
    result["generator"] = generator
    cpu_s = sum(
        getattr(cpu_after, field) - getattr(cpu_before, field) for field in ("ru_utime", "ru_stime")
    )
    # The aiohttp generator's includes starting its Python process.
    result["generator_cpu_ms_per_request"] = round(cpu_s * 1000 / max(sent, 1), 3)
    return result


def _generate_in_c(
    binary: Path, url: str, users: list[str], rate: float, seconds: float
) -> tuple[list[float], Counter[str], int, float]:
    address = urlsplit(url)
    with tempfile.TemporaryDirectory(prefix="streamrec-loadgen-") as folder:
        bodies, out = Path(folder) / "bodies", Path(folder) / "out"
        bodies.write_bytes(b"\n".join(orjson.dumps({"user_id": u, "k": 20}) for u in users))
        command = [
            str(binary), address.hostname or "127.0.0.1", str(address.port), "/recommend",
            str(rate), str(seconds), str(bodies), str(out), "512", str(REQUEST_TIMEOUT_S),
        ]  # fmt: skip
        subprocess.run(command, check=True)
        lines = out.read_text().splitlines()
    header = lines[0].split()  # "# sent N elapsed S connections C"
    sent, elapsed = int(header[2]), float(header[4])
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    for line in lines[1:]:
        _, latency_us, status = line.split()
        if status == "200":
            latencies.append(int(latency_us) / 1e6)
        elif status == "timeout":
            errors[f"timeout (> {REQUEST_TIMEOUT_S:g} s)"] += 1
        elif status.isdigit():
            errors[f"http {status}"] += 1
        else:
            errors[status] += 1  # closed, connect
    return latencies, errors, sent, elapsed


def _generate(
    url: str, users: list[str], rate: float, seconds: float
) -> tuple[list[float], Counter[str], int, float]:
    import aiohttp

    async def main() -> tuple[list[float], Counter[str], int, float]:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        connector = aiohttp.TCPConnector(limit=256)
        # Past this a request counts as an error ("timeout"): an overloaded server
        # then ends the run near its scheduled length instead of draining a backlog.
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

            async def one(user: str, due: float) -> None:
                body = orjson.dumps({"user_id": user, "k": 20})
                headers = {"content-type": "application/json"}
                try:
                    async with session.post("/recommend", data=body, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            errors[f"http {response.status}"] += 1
                            return
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1
                    return
                except TimeoutError:
                    errors[f"timeout (> {REQUEST_TIMEOUT_S:g} s)"] += 1
                    return
                latencies.append(time.perf_counter() - due)

            tasks = []
            started = time.perf_counter()
            total = int(rate * seconds)
            for n in range(total):
                due = started + n / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                tasks.append(asyncio.create_task(one(users[n % len(users)], due)))
            await asyncio.gather(*tasks)
            return latencies, errors, total, time.perf_counter() - started

    return asyncio.run(main())


def _held_rate(runs: list[dict[str, Any]], lowest: float) -> float:
    held = [
        r["rate"]
        for r in runs
        if r["servers"] == 1 and not r["errors"] and r["achieved_rate"] >= 0.95 * r["rate"]
    ]
    return max(held, default=lowest)


def _summary(
    rate: float, latencies: np.ndarray, errors: int, sent: int, elapsed: float
) -> dict[str, Any]:
    ms = latencies * 1000 if len(latencies) else np.zeros(1)
    return {
        "rate": rate,
        "achieved_rate": round(len(latencies) / elapsed, 1),
        "sent": sent,
        "errors": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "samples_ms": ms,
    }


def swap_run(
    url: str, settings: Settings, users: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """A steady run during which a new version is published and swapped in."""
    current = registry.current_version(settings.registry)
    assert current is not None

    publish_after_s = seconds / 4
    swapped_after: list[float] = []

    def publish_later() -> None:
        time.sleep(publish_after_s)
        manifest = registry.read_manifest(settings.registry, current)
        staged = settings.home / "staged"
        shutil.copytree(settings.registry / current, staged)
        (staged / registry.MANIFEST).unlink()
        published_at = time.monotonic()
        registry.publish(
            settings.registry, staged, parent=current, data_window=manifest.data_window,
            metrics=manifest.metrics, encoder=manifest.encoder, ranker=manifest.ranker,
            index=manifest.index, training=manifest.training,
        )  # fmt: skip
        # When the server answers with it: loading and warming the new version's
        # vectors come first (the swap waits for both).
        while time.monotonic() - published_at < seconds:
            if orjson.loads(_get(f"{url}/model"))["model_version"] != current:
                swapped_after.append(round(time.monotonic() - published_at, 1))
                return
            time.sleep(0.05)

    import threading

    publisher = threading.Thread(target=publish_later)
    publisher.start()
    result = open_loop(url, users, rate, seconds)
    publisher.join()
    result["published_after_s"] = round(publish_after_s, 1)
    # None: the run ended before the server swapped (its p99 then says nothing).
    result["swapped_after_s"] = swapped_after[0] if swapped_after else None
    return result


def event_to_effect(url: str, settings: Settings, users: list[str], samples: int) -> dict[str, Any]:
    """Produce a purchase of a user's top item; poll until the answer drops it."""
    ensure_topics(settings)
    worker = ServiceProcess(
        settings, ["worker"], settings.home / "worker.log", settings.worker_web_port
    )
    worker.start()
    delays: list[float] = []
    try:
        worker.wait_ready()
        with RecommenderClient(url) as client, EventProducer(settings) as producer:
            for n, user in enumerate(users[:samples]):
                top = client.recommend(user, k=5).item_ids[0]
                sent = time.perf_counter()
                event = Event(f"effect-{n}", user, top, EventType.PURCHASE, int(time.time() * 1000))
                producer.send(event)
                producer.flush()
                while top in client.recommend(user, k=5).item_ids:
                    if time.perf_counter() - sent > 10:
                        break
                delays.append((time.perf_counter() - sent) * 1000)
    finally:
        worker.stop()
    return {
        "p50_ms": round(float(np.percentile(delays, 50)), 1),
        "p99_ms": round(float(np.percentile(delays, 99)), 1),
        "samples": len(delays),
    }


def _get(url: str, timeout_s: float = 5) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return bytes(response.read())


def scrape(url: str) -> str:
    # After an overloaded run the server still works through the requests the
    # generator gave up on (the event loop does not cancel them): wait its turn.
    return _get(f"{url}/metrics", timeout_s=120).decode()


def stage_means(before: str, after: str) -> dict[str, float]:
    """Mean milliseconds per stage over a run, from the server's histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    def sums(text: str) -> dict[tuple[str, str], float]:
        found = {}
        for family in text_string_to_metric_families(text):
            if family.name in ("streamrec_serve_stage_seconds", "streamrec_serve_request_seconds"):
                for s in family.samples:
                    if s.name.endswith(("_sum", "_count")):
                        label = s.labels.get("stage") or f"request:{s.labels.get('endpoint')}"
                        found[(label, s.name.rsplit("_", 1)[1])] = s.value
        return found

    b, a = sums(before), sums(after)
    means = {}
    for label in {label for label, _ in a}:
        count = a.get((label, "count"), 0) - b.get((label, "count"), 0)
        if count:
            total = a.get((label, "sum"), 0) - b.get((label, "sum"), 0)
            means[label.replace("request:", "server total ")] = round(total / count * 1000, 3)
    return means


def generator_name(runs: list[dict[str, Any]]) -> str:
    """How the runs' load was generated, for a report."""
    if runs and runs[0].get("generator") == "C":
        cpu = max(run["generator_cpu_ms_per_request"] for run in runs)
        return f"`bench/loadgen.c`, epoll, at most {cpu} ms of CPU per request"
    return "aiohttp"


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r.get('servers', 1)} server(s) @ {r['rate']}/s: p50 {r['p50_ms']} ms, "
        f"p99 {r['p99_ms']} ms, errors {r['errors']}, achieved {r['achieved_rate']}/s"
    )


def _without_samples(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "samples_ms"}


def _plot(runs: list[dict[str, Any]], stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ms = np.sort(r["samples_ms"])
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"{r['servers']} srv, {r['rate']}/s")
    ax.set_xscale("log")
    ax.set_xlabel("latency from scheduled send (ms, log)")
    ax.set_ylabel("share of requests ≤ x")
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.set_title("POST /recommend, open loop, k = 20")
    ax.legend()
    fig.tight_layout()
    fig.savefig(REPORTS / f"{stem}.png", dpi=110)
    plt.close(fig)


def _write_markdown(r: dict[str, Any], stem: str) -> None:
    m = r["machine"]
    model = r["model"]
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{r['command']}`. Open-loop load ({generator_name(r['runs'])}, its own process) "
        "against "
        f"`streamrec serve`, POST /recommend k = 20 for {r['users']:,} users with 3-19 recent "
        f"events each and their vectors cached as the stream worker leaves them (the "
        "encoder runs only after a swap or an event); local Redis; "
        f"model {model['version']} ({model['items']} items, "
        f"C = {model.get('candidates')}, {model['source']}; trained on "
        f"{model.get('trained_on')}, {model.get('encoder_epochs')} encoder epochs).",
        f"{machine_line(m)} Load generator, server(s) and Redis share the cores.",
        "",
        "| servers | rate req/s | achieved | p50 ms | p95 ms | p99 ms | errors | CPU ms/req "
        "| load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in r["runs"]:
        before, after = run_["load_avg"]
        lines.append(
            f"| {run_['servers']} | {run_['rate']} | {run_['achieved_rate']} | {run_['p50_ms']} | "
            f"{run_['p95_ms']} | {run_['p99_ms']} | {run_['errors']} | "
            f"{run_['server_cpu_ms_per_request']} | {before} → {after} |"
        )
    kinds = sorted({k for x in r["runs"] for k in x.get("error_kinds", {})})
    if kinds:
        lines += [
            "",
            "Errors by kind: "
            + "; ".join(
                f"{x['servers']} srv @ {x['rate']}/s: "
                + ", ".join(f"{k} {v}" for k, v in sorted(x.get("error_kinds", {}).items()))
                for x in r["runs"]
                if x.get("error_kinds")
            )
            + ".",
        ]
    lines += [
        "",
        f"During a model swap at {r['swap_rate']} req/s (the highest rate one server held "
        f"without errors): p99 {r['swap_p99_ms']} ms against {r.get('swap_steady_p99_ms')} ms "
        f"steady, errors {r['swap_errors']} (goal: 0 errors, p99 ≤ 2× steady). "
        + (
            f"The new version was published {r['swap_published_after_s']} s into the run and "
            f"answered {r['swap_swapped_after_s']} s later (loading and warming its user "
            "vectors first)."
            if r.get("swap_swapped_after_s") is not None
            else "**The server had not swapped when the run ended: this p99 is not a swap's.**"
        ),
        f"Event-to-effect (purchase produced to Kafka → the item gone from the answer), "
        f"{r['event_to_effect_samples']} samples: p50 {r['event_to_effect_p50_ms']} ms, "
        f"p99 {r['event_to_effect_p99_ms']} ms.",
        "",
        "Mean time per stage inside the server (ms, wall clock: queueing for the CPU "
        "included; encode counts only requests whose cached user vector was stale):",
        "",
        "| servers | rate | " + " | ".join(STAGE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(STAGE_COLUMNS),
        *[
            f"| {x['servers']} | {x['rate']} | "
            + " | ".join(str(x["stages_ms"].get(c, "")) for c in STAGE_COLUMNS)
            + " |"
            for x in r["runs"]
        ],
        "",
        f"![latency CDF]({stem}.png)",
        "",
    ]
    (REPORTS / f"{stem}.md").write_text("\n".join(lines), encoding="utf-8")
