"""A million items: the serve bench's pinned model grown to a large catalogue with
synthetic items (bench/scenarios/grown.py), published through the production path
(an HNSW index above `STREAMREC_HNSW_THRESHOLD`), then measured: index build time and
memory, recall@C of the HNSW index against exact search, live additions per second,
and `/recommend` latency of `streamrec serve` holding the grown bundle against the
same run's trained (flat) bundle, under the serve bench's open-loop generator.
Writes bench/reports/catalogue.{md,json,png} (`--quick`: catalogue-quick.*)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from bench.common import (
    REPORTS,
    in_process_report_head,
    latency_axes,
    latency_cdf,
    machine,
    republish,
    write_json,
)
from bench.scenarios.data import YOOCHOOSE, shared
from bench.scenarios.grown import (
    calibrated_noise_scale,
    grow_catalogue,
    index_vectors,
    spread_figures,
)
from bench.serve import (
    CATEGORIES,
    WARM_UP_S,
    bench_settings,
    cache_user_vectors,
    console,
    load_catalogue,
    measured_run,
    model_source,
    open_loop,
    seed_users,
    serving,
    train_bench_model,
)
from devtools.devstack import DevStack
from devtools.processes import ServiceProcess
from model_server.live_items import BATCH
from retrain.publish import publish_models
from retrain.training import TrainedModels, TrainPlan
from streamrec import registry
from streamrec.content import ItemContent, content_tokens
from streamrec.events import EventType
from streamrec.loaded import LiveIndex, ServedModel, open_model
from streamrec.settings import Settings
from streamrec.state import StateStore
from streamrec.user_vectors import TYPE_IDS, encoder_inputs, known_events

CUTOFFS = (50, 100, 200)  # recall@C; 200 is the bench model's C
P99_GOAL_RATIO = 2.0
RECALL_GOAL = 0.95
QUERY_KINDS = (
    ("recall_sessions", "held-out sessions"),
    ("recall_users", "bench users (random clicks)"),
    ("recall_items", "item vectors"),
)


@dataclass(frozen=True)
class Plan:
    items: int  # the grown catalogue
    train_sessions: int  # of yoochoose1_64, as the serve bench's plan
    users: int
    rates: tuple[int, ...]
    seconds: float
    queries: int  # users whose vectors query the recall check
    ef_searches: tuple[int, ...]  # HNSW efSearch values for recall (FAISS reads >= k)
    live_items: int  # added to a LiveIndex through the content tower
    hnsw_adds: int  # added to the HNSW index one at a time


QUICK = Plan(items=100_000, train_sessions=10_000, users=1000, rates=(250,), seconds=10,
             queries=500, ef_searches=(200, 256, 512), live_items=5000, hnsw_adds=500)  # fmt: skip
FULL = Plan(items=1_000_000, train_sessions=100_000, users=10_000, rates=(250, 1000),
            seconds=30, queries=1000, ef_searches=(200, 256, 384, 512), live_items=20_000,
            hnsw_adds=2000)  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    load_before = os.getloadavg()[0]
    home = Path(tempfile.mkdtemp(prefix="streamrec-bench-catalogue-"))
    stack = DevStack(home)
    settings = bench_settings(home, stack, "bench-catalogue")
    grown_settings = settings.model_copy(update={"registry": home / "registry-grown"})
    kept = False
    try:
        models, train_plan = train_bench_model(plan.train_sessions)
        trained = publish_models(
            models, settings.registry, train_plan, {"source": str(YOOCHOOSE)}, None,
            settings.hnsw_threshold,
        )  # fmt: skip
        source = model_source(trained, models, plan.train_sessions, train_plan)
        build = publish_grown(models, train_plan, grown_settings, plan.items)
        del models
        catalogue = asyncio.run(load_catalogue(settings))  # the trained items' records
        users = asyncio.run(seed_users(settings, plan.users))  # vectors cached for `trained`
        grown = registry.read_manifest(grown_settings.registry, build["version"])
        build.update(index_memory(grown_settings.registry / grown.version / "items.faiss"))
        measured = measure_index(grown_settings, grown.version, users[: plan.queries], plan)
        tuned = tune_ef_search(grown_settings, grown.version, measured)
        measured["served_ef_search"] = tuned["ef_search"]
        serves = [
            serve_runs("trained", settings, users, plan, trained.version),
            serve_runs("grown", grown_settings, users, plan, tuned["version"]),
        ]
    except BaseException:
        kept = True
        raise
    finally:
        stack.down()
        if kept:
            console.print(f"logs kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    command = f"streamrec bench catalogue{' --quick' if quick else ''}"
    report = {
        "command": command,
        "quick": quick,
        "plan": asdict(plan),
        "machine": machine(),
        "load_avg": (round(load_before, 2), round(os.getloadavg()[0], 2)),
        "model": source,
        "catalogue_records": len(catalogue),
        "users": len(users),
        "grown": {
            **build,
            "synthetic_items": plan.items - source["items"],
        },
        **measured,
        "tuned": tuned,
        "serving": serves,
        "p99_ratio": p99_ratios(serves),
    }
    stem = "catalogue-quick" if quick else "catalogue"
    write_json(stem, {**report, "serving": [_without_samples(s) for s in serves]})
    _plot(report, stem)
    _write_markdown(report, stem)
    console.print(summary_line(report))
    return report


def publish_grown(
    models: TrainedModels, train_plan: TrainPlan, settings: Settings, n_items: int
) -> dict[str, Any]:
    """The grown catalogue published as production publishes (retrain/publish.py), with
    the time it took, the bench process's peak resident memory over it, the bundle's
    files and how the grown vectors compare with the trained ones."""
    noise_scale = calibrated_noise_scale(models)
    grown = grow_catalogue(models, n_items, noise_scale)
    spread = spread_figures(index_vectors(grown), len(models.vocab))
    with peak_rss() as peak:
        started = time.perf_counter()
        manifest = publish_models(
            grown, settings.registry, train_plan, {"source": str(YOOCHOOSE), "grown_to": n_items},
            None, settings.hnsw_threshold,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    folder = settings.registry / manifest.version
    return {
        "version": manifest.version,
        "index": dict(manifest.index),
        "publish_seconds": round(seconds, 1),
        "publish_peak_rss_growth_mb": round(peak["growth_bytes"] / 2**20, 1),
        "bundle_files_mb": {
            path.name: round(path.stat().st_size / 2**20, 1)
            for path in sorted(folder.iterdir())
            if path.is_file()
        },
        "noise_scale": noise_scale,
        "spread": spread,
    }


@contextmanager
def peak_rss(every_s: float = 0.2) -> Iterator[dict[str, int]]:
    """The process's resident memory sampled in a thread: `growth_bytes` is the peak
    over the block less the resident memory at its start."""
    process = psutil.Process()
    start = process.memory_info().rss
    figures = {"growth_bytes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            growth = process.memory_info().rss - start
            figures["growth_bytes"] = max(figures["growth_bytes"], growth)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join()


def index_memory(path: Path) -> dict[str, Any]:
    """The index file's size and what reading it adds to the resident memory of a fresh
    process (in this one, memory freed earlier would be reused and hide it)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        growth = pool.apply(_rss_growth_of_reading, (str(path),))
    return {"index_file_bytes": path.stat().st_size, "index_rss_growth_bytes": growth}


def _rss_growth_of_reading(path: str) -> int:
    import faiss

    process = psutil.Process()
    before = process.memory_info().rss
    index = faiss.read_index(path)
    growth = int(process.memory_info().rss - before)
    del index
    return growth


def measure_index(settings: Settings, version: str, users: list[str], plan: Plan) -> dict[str, Any]:
    """Recall against exact search for the users' vectors and for sampled item vectors,
    search time per query, and live additions, on the grown version as a server opens it."""
    model = open_model(settings.registry, version)
    sessions = session_queries(model, plan.queries)
    queries = asyncio.run(user_queries(settings, model, users))
    items = model.item_vectors(
        list(np.random.default_rng(2).choice(model.n_items, plan.queries, replace=False) + 1)
    )
    index = model.bundle.index
    flat = flat_copy(index)
    return {
        "recall_sessions": recall_sweep(index, flat, sessions, plan.ef_searches),
        "recall_users": recall_sweep(index, flat, queries, plan.ef_searches),
        "recall_items": recall_sweep(index, flat, items, plan.ef_searches),
        "served_ef_search": int(model.bundle.manifest.index.get("ef_search", 0)),
        "flat_search_ms_per_query": flat_search_ms(flat, sessions[:50]),
        "live": live_additions(model, plan.live_items),
        # Last: it adds to the index this process opened (never to the bundle's file).
        "hnsw_adds": hnsw_additions(model, plan.hnsw_adds),
    }


def session_queries(model: ServedModel, count: int) -> np.ndarray:
    """User vectors of `count` held-out yoochoose1_64 test prefixes (real sessions the
    model did not train on), as `model` computes them: the queries a shop's users ask."""
    from retrain.data import load_srgnn

    prefixes = load_srgnn(shared(YOOCHOOSE)).test.prefixes
    rows = model.bundle.rows
    known = []
    for n in np.random.default_rng(5).permutation(len(prefixes)):
        events = [(rows[i], TYPE_IDS[EventType.CLICK]) for i in prefixes[n].item_ids if i in rows]
        if events:
            known.append(events[-model.bundle.max_len :])
        if len(known) == count:
            break
    return _encoded(model, known)


def tune_ef_search(settings: Settings, version: str, measured: dict[str, Any]) -> dict[str, Any]:
    """The smallest swept efSearch whose recall@200 for held-out sessions meets the goal
    (the largest swept when none does). When the bundle was built with another, it is
    republished with this one (in the index file and the manifest), as a new version:
    the one served."""
    import faiss

    manifest = registry.read_manifest(settings.registry, version)
    rows = measured["recall_sessions"]
    built = manifest.index.get("ef_search")
    if built is None or not rows:
        return {"ef_search": built, "version": version, "built_ef_search": built}
    meeting = [row["ef_search"] for row in rows if row["recall@200"] >= RECALL_GOAL]
    chosen = min(meeting) if meeting else max(row["ef_search"] for row in rows)
    if chosen == built:
        return {"ef_search": chosen, "version": version, "built_ef_search": built}
    index: Any = faiss.read_index(str(settings.registry / version / "items.faiss"))
    index.hnsw.efSearch = chosen
    path = settings.home / "items-tuned.faiss"
    faiss.write_index(index, str(path))
    del index
    tuned = republish(
        settings.registry, version, {"items.faiss": path},
        index={**manifest.index, "ef_search": chosen, "tuned_by": TUNED_BY},
    )  # fmt: skip
    path.unlink()
    return {"ef_search": chosen, "version": tuned.version, "built_ef_search": built}


TUNED_BY = (
    "streamrec bench catalogue: the smallest swept efSearch with recall@200 >= "
    f"{RECALL_GOAL} for held-out sessions"
)


async def user_queries(settings: Settings, model: ServedModel, users: list[str]) -> np.ndarray:
    """The users' vectors as `model` computes them from their recent events in Redis."""
    if not users:
        return np.zeros((0, model.dim), dtype=np.float32)
    store = StateStore(settings)
    try:
        stored = await store.read_users(users, for_ranking=False)
    finally:
        await store.close()
    known = [k for k in (known_events(model, u.recent_events) for u in stored) if k]
    return _encoded(model, known)


def _encoded(model: ServedModel, known: list[list[tuple[int, int]]]) -> np.ndarray:
    if not known:
        return np.zeros((0, model.dim), dtype=np.float32)
    return np.concatenate(
        [
            model.bundle.user_vectors(*encoder_inputs(known[start : start + 100]))
            for start in range(0, len(known), 100)
        ]
    )


def flat_copy(index: Any) -> Any:
    """An exact inner-product index over the same vectors as `index`."""
    import faiss

    flat = faiss.IndexFlatIP(index.d)
    flat.add(index.reconstruct_n(0, index.ntotal))
    return flat


def recall_at(approximate: np.ndarray, exact: np.ndarray, cutoff: int) -> float:
    """Mean share of each query's exact top-`cutoff` found in its approximate top-`cutoff`
    (rows: queries; columns: positions, best first)."""
    found = [
        len(np.intersect1d(a[:cutoff], e[:cutoff])) for a, e in zip(approximate, exact, strict=True)
    ]
    return float(np.mean(found)) / cutoff


def recall_sweep(
    index: Any, flat: Any, queries: np.ndarray, ef_searches: Sequence[int]
) -> list[dict[str, Any]]:
    """Recall@C of `index` against exact search (`flat`, the same vectors), and its time
    per query searched one at a time on one thread (as the server searches), for each
    efSearch; the index's own efSearch is restored afterwards."""
    if not len(queries):
        return []
    k = max(CUTOFFS)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exact = np.asarray(flat.search(queries, k)[1])
    hnsw = getattr(index, "hnsw", None)
    served_ef = hnsw.efSearch if hnsw is not None else None
    rows = []
    for ef in ef_searches if hnsw is not None else (0,):
        if hnsw is not None:
            hnsw.efSearch = ef
        found = np.empty_like(exact)
        took_ms = []
        for n, query in enumerate(queries):
            started = time.perf_counter()
            _, positions = index.search(query[None, :], k)
            took_ms.append((time.perf_counter() - started) * 1000)
            found[n] = positions[0]
        rows.append(
            {
                "ef_search": ef if hnsw is not None else None,
                "queries": len(queries),
                **{f"recall@{c}": round(recall_at(found, exact, c), 4) for c in CUTOFFS},
                "search_ms_mean": round(float(np.mean(took_ms)), 3),
                "search_ms_p99": round(float(np.percentile(took_ms, 99)), 3),
            }
        )
    if hnsw is not None:
        hnsw.efSearch = served_ef
    return rows


def flat_search_ms(flat: Any, queries: np.ndarray) -> float:
    """Exact search's mean time per query (one at a time, one thread): what a flat
    index would cost each request at this size."""
    started = time.perf_counter()
    for query in np.ascontiguousarray(queries, dtype=np.float32):
        flat.search(query[None, :], max(CUTOFFS))
    return round((time.perf_counter() - started) * 1000 / len(queries), 3)


def new_contents(count: int) -> list[ItemContent]:
    """Brand-new items as the bench's catalogue describes its own: a category of the
    catalogue's, a title (its words hashed into tokens), a price and a tag."""
    rng = np.random.default_rng(3)
    categories = rng.integers(0, CATEGORIES, count)
    return [
        ItemContent(
            (f"cat-{int(c)}",),
            title=f"bench item new-{n}",
            price=round(float(price), 2),
            tags=(f"style-{int(c) % 8}",),
        )
        for n, (c, price) in enumerate(zip(categories, rng.uniform(1, 200, count), strict=True))
    ]


def live_additions(model: ServedModel, count: int) -> dict[str, Any]:
    """Items added as the server adds a new catalogue item (model_server/live_items.py):
    content tokens, the bundle's content tower, the flat `LiveIndex`, in batches of
    `BATCH`; then what one search of the live index costs at that size."""
    if model.bundle.content_tower is None:
        return {"items": 0, "reason": "the bundle has no content tower"}
    live = LiveIndex(model.dim)
    contents = new_contents(count)
    started = time.perf_counter()
    for start in range(0, count, BATCH):
        batch = contents[start : start + BATCH]
        tokens = np.stack([content_tokens(content) for content in batch])
        ids = [f"live-{n}" for n in range(start, start + len(batch))]
        live.add(ids, model.bundle.content_vectors(tokens))
    seconds = time.perf_counter() - started
    queries = np.random.default_rng(4).standard_normal((200, model.dim)).astype(np.float32)
    searched = time.perf_counter()
    for query in queries:
        live.search(query[None, :], max(CUTOFFS))
    return {
        "items": count,
        "per_second": round(count / seconds),
        "search_ms_per_query": round((time.perf_counter() - searched) * 1000 / len(queries), 3),
    }


def hnsw_additions(model: ServedModel, count: int) -> dict[str, Any]:
    """Items added one at a time straight into the bundle's HNSW index (in this
    process's copy): what live items would cost if they went there instead."""
    index = model.bundle.index
    if not hasattr(index, "hnsw"):
        return {"items": 0, "reason": "the index is flat"}
    vectors = model.bundle.content_vectors(
        np.stack([content_tokens(content) for content in new_contents(count)])
    )
    started = time.perf_counter()
    for vector in vectors:
        index.add(vector[None, :])
    seconds = time.perf_counter() - started
    return {"items": count, "per_second": round(count / seconds)}


def serve_runs(
    label: str, settings: Settings, users: list[str], plan: Plan, version: str
) -> dict[str, Any]:
    """`streamrec serve` on one registry: its start-up, resident memory and the index it
    serves, then one measured open-loop run per rate of the plan."""
    if label != "trained":
        # The trained version's vectors were cached by seed_users; this one's are not.
        asyncio.run(cache_user_vectors(settings, users))
    started = time.perf_counter()
    with serving(settings, 1, ready_timeout_s=900) as (url, server):
        ready_s = time.perf_counter() - started
        described = orjson.loads(_get(f"{url}/v1/model"))
        if described["model_version"] != version:
            raise RuntimeError(f"{label}: the server serves {described['model_version']}")
        open_loop(url, users, min(plan.rates), WARM_UP_S)
        rss_mb = round(server_rss(server) / 2**20, 1)
        runs = []
        for rate in plan.rates:
            result = measured_run(url, server, users, rate, plan.seconds)
            runs.append(result)
            console.print(f"{label}: {_run_line(result)}")
    return {
        "label": label,
        "version": version,
        "items": described["items"],
        "index": described["index"].get("kind"),
        "ready_seconds": round(ready_s, 1),
        "server_rss_mb": rss_mb,
        "runs": runs,
    }


def server_rss(server: ServiceProcess) -> int:
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def _held(run: dict[str, Any]) -> bool:
    return not run["errors"] and run["achieved_rate"] >= 0.95 * run["rate"]


def p99_ratios(serves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grown p99 / trained p99 at each rate; no ratio where either server did not hold
    the rate (a p99 of the few answers an overloaded server gave compares with nothing)."""
    trained, grown = serves
    rows = []
    for small, large in zip(trained["runs"], grown["runs"], strict=True):
        held = _held(small) and _held(large)
        rows.append(
            {
                "rate": small["rate"],
                "trained_p99_ms": small["p99_ms"],
                "grown_p99_ms": large["p99_ms"],
                "ratio": round(large["p99_ms"] / small["p99_ms"], 2) if held else None,
                "held": held,
            }
        )
    return rows


def _run_line(r: dict[str, Any]) -> str:
    return (
        f"{r['rate']}/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']}, "
        f"achieved {r['achieved_rate']}/s, server CPU {r['server_cpu_ms_per_request']} ms/req, "
        f"load avg {r['load_avg'][0]} -> {r['load_avg'][1]}"
    )


def _served_recall(r: dict[str, Any], queries: str = "recall_sessions") -> dict[str, Any]:
    rows: list[dict[str, Any]] = r[queries]
    return next((x for x in rows if x["ef_search"] == r["served_ef_search"]), rows[-1])


def _meets(r: dict[str, Any]) -> bool:
    return bool(_served_recall(r)["recall@200"] >= RECALL_GOAL)


def summary_line(r: dict[str, Any]) -> str:
    served = _served_recall(r)
    ratios = ", ".join(
        f"{x['rate']}/s {x['ratio']}x" if x["ratio"] is not None else f"{x['rate']}/s not held"
        for x in r["p99_ratio"]
    )
    return (
        f"{r['grown']['index']['n_items']:,} items, {r['grown']['index']['kind']}: "
        f"recall@200 {served['recall@200']} at efSearch {r['served_ef_search']} (goal >= "
        f"{RECALL_GOAL}); build {r['grown']['index'].get('build_seconds')} s; p99 grown/trained "
        f"{ratios} (goal <= {P99_GOAL_RATIO}x); reference loop "
        f"{r['machine']['reference_loop_ms']} ms; load avg {r['load_avg'][0]} -> {r['load_avg'][1]}"
    )


def _without_samples(serve: dict[str, Any]) -> dict[str, Any]:
    return {
        **serve,
        "runs": [{k: v for k, v in x.items() if k != "samples_ms"} for x in serve["runs"]],
    }


def _plot(r: dict[str, Any], stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, recall) = plt.subplots(1, 2, figsize=(11, 4))
    for serve in r["serving"]:
        for x in serve["runs"]:
            latency_cdf(
                latency, x["samples_ms"], ls="-" if serve["label"] == "trained" else "--",
                label=f"{serve['items']:,} items ({serve['index']}), {x['rate']}/s",
            )  # fmt: skip
    latency_axes(latency, "POST /v1/recommend, open loop, k = 20")
    latency.legend(fontsize=8)
    for queries, label in QUERY_KINDS:
        efs = [x["ef_search"] for x in r[queries]]
        recall.plot(efs, [x["recall@200"] for x in r[queries]], marker="o", label=label)
    recall.axhline(RECALL_GOAL, color="grey", lw=0.5, ls="--")
    recall.set_xlabel("HNSW efSearch")
    recall.set_ylabel("recall@200 against exact search")
    recall.set_title(f"{r['grown']['index']['n_items']:,} items, M = {r['grown']['index']['M']}")
    recall.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(REPORTS / f"{stem}.png", dpi=110)
    plt.close(fig)


def _write_markdown(r: dict[str, Any], stem: str) -> None:
    grown = r["grown"]
    index = grown["index"]
    model = r["model"]
    lines = in_process_report_head(
        "A million items" if not r["quick"] else "A large catalogue (quick)",
        r["command"],
        r["load_avg"],
        f"The serve bench's pinned model ({model['items']:,} trained items, trained on "
        f"{model['sessions']:,} sessions of yoochoose1_64, C = {model['candidates']}) grown to "
        f"{index['n_items']:,} items: {grown['synthetic_items']:,} synthetic items, each a "
        f"trained item's id embedding plus Gaussian noise of {grown['noise_scale']} × the "
        "trained embeddings' standard deviation per dimension, with that item's content "
        "tokens (bench/scenarios/grown.py), published by `retrain/publish.py` as production "
        "publishes. The noise scale is calibrated so that synthetic items are as near their "
        "nearest trained item as trained items are to their nearest other one (mean cosine "
        f"{grown['spread'].get('mean_cosine_synthetic_to_nearest_real')} against "
        f"{grown['spread']['mean_cosine_real_to_nearest_real']}): the grown catalogue is as "
        "dense around each item as the trained one, neither clumps of near-duplicates nor "
        "noise. Recall is measured for three kinds of query: users' vectors from held-out "
        "yoochoose1_64 test sessions (the headline: real users), the bench's seeded users "
        "(3-19 clicks on random items: vectors far from every item, the hardest case for a "
        "graph index) and sampled item vectors (what /v1/similar asks).",
    )
    files = ", ".join(f"{name} {mb} MB" for name, mb in grown["bundle_files_mb"].items())
    lines += [
        "## Index",
        "",
        f"{index['kind']} (M = {index.get('M')}, efConstruction = {index.get('ef_construction')}, "
        f"efSearch = {index.get('ef_search')}, inner product, dim {index['dim']}): built in "
        f"**{index.get('build_seconds')} s**; the whole publish (ONNX export with the grown "
        f"item table, parity check, index, checksums) {grown['publish_seconds']} s, peak "
        f"resident memory of the publishing process +{grown['publish_peak_rss_growth_mb']} MB. "
        f"Index file {grown['index_file_bytes']:,} bytes; reading it adds "
        f"{grown['index_rss_growth_bytes']:,} bytes of resident memory. Bundle files: {files}.",
        "",
        f"Recall@C against exact (flat) search over the same vectors, k = {max(CUTOFFS)}; "
        "search time per query one at a time on one thread, as the server searches "
        f"(exact search at this size: {r['flat_search_ms_per_query']} ms per query):",
        "",
        "| queries | efSearch | recall@50 | recall@100 | recall@200 | ms/query mean | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for queries, label in QUERY_KINDS:
        for x in r[queries]:
            served = " (served)" if x["ef_search"] == r["served_ef_search"] else ""
            lines.append(
                f"| {x['queries']} {label} | {x['ef_search']}{served} | {x['recall@50']} | "
                f"{x['recall@100']} | {x['recall@200']} | {x['search_ms_mean']} | "
                f"{x['search_ms_p99']} |"
            )
    live, adds = r["live"], r["hnsw_adds"]
    tuned = r["tuned"]
    lines += [
        "",
        "FAISS reads max(efSearch, k) candidates, so efSearch below 200 is 200 here. "
        + (
            f"Built with efSearch {tuned['built_ef_search']}; republished with efSearch "
            f"{tuned['ef_search']} (index file and manifest; version {tuned['version']}), the "
            "smallest swept value that meets the goal for held-out sessions"
            f"{'' if _meets(r) else ' (none did: the largest swept)'}; that version is the "
            "one served below."
            if tuned["ef_search"] != tuned["built_ef_search"]
            else f"Served as built (efSearch {tuned['ef_search']})."
        ),
        "",
        "## Live additions",
        "",
        f"Through the content tower into the flat `LiveIndex` (as model_server/live_items.py "
        f"adds a new catalogue item, batches of {BATCH}): **{live.get('per_second')} items/s** "
        f"over {live['items']:,} items; one search of the live index at that size "
        f"{live.get('search_ms_per_query')} ms. Straight into the HNSW index one at a time: "
        f"{adds.get('per_second')} items/s over {adds['items']:,} items.",
        "",
        "## Serving",
        "",
        f"`streamrec serve` (one process) on each bundle in turn, the same Redis, "
        f"{r['users']:,} users with their vectors cached for the version served, "
        f"{r['catalogue_records']:,} catalogue records (the trained items'; synthetic items "
        f"have none and count as available), {WARM_UP_S:g} s of warm-up, then "
        f"{r['plan']['seconds']:g} s per rate under the serve bench's open-loop generator; "
        "CPU ms/req is the server's CPU per answered request.",
        "",
        "| items | index | ready s | RSS MB | rate | achieved | p50 ms | p99 ms | errors "
        "| CPU ms/req | retrieve ms | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for serve in r["serving"]:
        for x in serve["runs"]:
            lines.append(
                f"| {serve['items']:,} | {serve['index']} | {serve['ready_seconds']} | "
                f"{serve['server_rss_mb']} | {x['rate']} | {x['achieved_rate']} | {x['p50_ms']} "
                f"| {x['p99_ms']} | {x['errors']} | {x['server_cpu_ms_per_request']} | "
                f"{x['stages_ms'].get('retrieve', '')} | {x['load_avg'][0]} → {x['load_avg'][1]} |"
            )
    lines += ["", "p99 of the grown catalogue against the trained one, same run and rate:", ""]
    for x in r["p99_ratio"]:
        ratio = f"{x['ratio']}×" if x["ratio"] is not None else "no ratio: not held"
        lines.append(
            f"- {x['rate']} req/s: {x['grown_p99_ms']} / {x['trained_p99_ms']} ms = {ratio}"
        )
    at_served = _served_recall(r)
    lines += [
        "",
        f"Goals: recall@200 ≥ {RECALL_GOAL} (here {at_served['recall@200']} at efSearch "
        f"{r['served_ef_search']} for held-out sessions' vectors); p99 ≤ {P99_GOAL_RATIO}× "
        "the trained catalogue's at the same rate.",
        "",
        f"![latency and recall]({stem}.png)",
        "",
    ]
    (REPORTS / f"{stem}.md").write_text("\n".join(lines), encoding="utf-8")
