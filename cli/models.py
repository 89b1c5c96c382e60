"""`streamrec train`, `streamrec model ...`, `streamrec eval offline|prequential`,
`streamrec bench offline|prequential`.

Training code lives in `retrain/` and is imported inside the command bodies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import orjson
import typer

from streamrec import registry
from streamrec.content import ItemContent
from streamrec.errors import BundleError, InputFormatError
from streamrec.event_files import FileFormat
from streamrec.events import Rejection
from streamrec.settings import Settings


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(no_args_is_help=True, help="Inspect and switch model versions.")
    eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models offline or live.")
    app.command("train")(train)
    model_app.command("list")(model_list)
    model_app.command("show")(model_show)
    model_app.command("verify")(model_verify)
    model_app.command("current")(model_current)
    model_app.command("rollback")(model_rollback)
    eval_app.command("offline")(eval_offline)
    eval_app.command("prequential")(eval_prequential)
    app.add_typer(model_app, name="model")
    app.add_typer(eval_app, name="eval")
    bench_group = _group(app, "bench", "Benchmarks; reports go to bench/reports/.")
    bench_group.command("offline")(bench_offline)
    bench_group.command("prequential")(bench_prequential)
    bench_group.command("retrain")(bench_retrain)


def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The sub-app called `name` if another module registered it, else a new one."""
    for group in app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    sub_app = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(sub_app, name=name)
    return sub_app


def _fail(message: str) -> NoReturn:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def train(
    data: Path = typer.Option(..., help="An event file, or the SR-GNN folder."),
    fmt: str = typer.Option(
        "", "--format", help="jsonl|csv|taobao|sessions|srgnn; detected if empty."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first bad row (exit 1) instead of skipping it."
    ),
    epochs: int = typer.Option(8, min=1, help="Encoder epochs."),
    dim: int = typer.Option(96, min=8, help="Embedding size."),
    negatives: int = typer.Option(
        0, min=0, help="Sampled softmax with this many negatives per batch; 0: full softmax."
    ),
    seed: int = typer.Option(0),
    items: Path | None = typer.Option(
        None,
        "--items",
        help="The shop's catalogue (item records, JSONL or CSV): categories for the "
        "ranker, and content (categories, title, price, tags) for new items' vectors.",
    ),
    warm_start: bool = typer.Option(
        False,
        "--warm-start",
        help="Continue from the current version (its items and weights; same --dim); "
        "by default a new model is trained from scratch.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Publish even when no held-out case could measure the model."
    ),
    quiet: bool = typer.Option(False, help="No progress bars."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Train the encoder in this many processes on this node (torch.distributed, "
        "DistributedDataParallel; gloo on CPU, NCCL on GPUs); rank 0 writes the bundle.",
    ),
) -> None:
    """Train the retriever and the ranker on an event file, export them and publish a
    bundle that becomes the current version (servers and workers swap to it)."""
    from dataclasses import replace

    from retrain import distributed

    if nproc > 1 and distributed.joined() is distributed.SINGLE:
        raise typer.Exit(distributed.relaunch(nproc, distributed.without_nproc(sys.argv[1:])))
    group = distributed.joined()

    from cli.ingest import exit_on_bad_rows
    from retrain.data import SRGNN, read_sequences
    from retrain.publish import load_warm_start, publish_models
    from retrain.training import train_models, train_plan

    settings = Settings()
    try:
        event_log = read_sequences(data, fmt or None, strict=strict)
        content = _catalogue_content(items) if items is not None else None
    except InputFormatError as exc:
        _fail(str(exc))
    typer.echo(
        f"read {data} as {event_log.fmt}: {event_log.n_events} events, "
        f"{len(event_log.sequences)} users, {event_log.n_items} items; "
        f"{len(event_log.skipped)} bad rows skipped"
    )
    categories = (
        {item: c.categories for item, c in content.items() if c.categories}
        if content is not None
        else event_log.categories
    )
    if categories:
        source = items if content is not None else f"{data}'s category_id column"
        typer.echo(f"catalogue: {len(categories)} items with a category, from {source}")
    sequences = event_log.sequences
    if not sequences:
        exit_on_bad_rows(event_log.skipped)
        _fail(f"{data}: no events to train on")
    plan = train_plan(
        settings,
        dim=dim,
        # Files without timestamps (SR-GNN's) hold out whole sessions, not the newest time.
        split="sequences" if event_log.fmt == SRGNN else "time",
    )
    plan = replace(
        plan, encoder=replace(plan.encoder, epochs=epochs, seed=seed, negatives=negatives)
    )
    parent = registry.current_version(settings.registry) if warm_start else None
    parent_vocab = parent_encoder = None
    if warm_start and parent is None:
        _fail(f"--warm-start: {settings.registry} has no current version to continue from")
    if parent is not None:
        parent_vocab, parent_encoder = load_warm_start(settings.registry, parent)
        if parent_encoder.config.dim != dim:
            _fail(f"current version {parent} has dim {parent_encoder.config.dim}; asked for {dim}")
        typer.echo(f"warm start from {parent} ({len(parent_vocab)} items)")
    try:
        models = train_models(
            sequences, plan, parent_vocab, parent_encoder, not quiet, categories or None,
            content, group,
        )  # fmt: skip
    except distributed.Finished:
        return  # not rank 0: its share of the encoder's training is done
    typer.echo(json.dumps(models.validation))
    cases = models.validation.get("retriever", {}).get("cases", 0)
    if not cases and not force:
        _fail(
            f"not published: none of {data}'s held-out events could measure the model (0 "
            "validation cases; too few events or users with a history?). Train on more "
            "data, or publish anyway with --force."
        )
    manifest = publish_models(
        models,
        settings.registry,
        plan,
        {"source": str(data), "format": event_log.fmt},
        parent,
        settings.hnsw_threshold,
    )
    typer.echo(f"published {manifest.version} to {settings.registry} in {models.seconds:.0f}s")
    exit_on_bad_rows(event_log.skipped)


def _catalogue_content(path: Path) -> dict[str, ItemContent]:
    """Each item's newest live record in a catalogue file, as the content tower reads
    it; a file without one readable record is an error, bad rows are skipped."""
    from streamrec.item_files import read_items
    from streamrec.items import ItemDelete

    newest: dict[str, tuple[int, ItemContent | None]] = {}
    if not path.is_file():
        raise InputFormatError(f"--items: expected a catalogue file at {path}, found none")
    for _, record in read_items(path):
        if isinstance(record, Rejection):
            continue
        if record.item_id in newest and newest[record.item_id][0] > record.ts_ms:
            continue
        content = (
            None
            if isinstance(record, ItemDelete)
            else ItemContent(record.categories, record.title, record.price, record.tags)
        )
        newest[record.item_id] = (record.ts_ms, content)
    if not newest:
        raise InputFormatError(f"--items: {path} holds no readable item record")
    return {item: content for item, (_, content) in newest.items() if content is not None}


def model_list() -> None:
    """Every version in the registry, oldest first; * marks the current one, ! an entry
    that is not a readable bundle (with why)."""
    root = Settings().registry
    try:
        current = registry.current_version(root)
    except BundleError as exc:
        current = None
        typer.echo(f"! {registry.CURRENT}  unreadable: {registry.refusal_reason(exc)}")
    try:
        listing = registry.list_registry(root)
    except BundleError as exc:
        _fail(registry.refusal_reason(exc))
    for manifest in listing.versions:
        mark = "*" if manifest.version == current else " "
        metrics = manifest.metrics.get("validation", {}).get("retriever_ranker", {})
        typer.echo(
            f"{mark} {manifest.version}  {manifest.created_at}  parent={manifest.parent}  "
            f"items={manifest.index.get('n_items')}  valid={json.dumps(metrics)}"
        )
    for name, reason in listing.unreadable.items():
        typer.echo(f"! {name}  unreadable: {registry.refusal_reason(reason)}")


def model_show(version: str) -> None:
    """Print a version's manifest, with its lineage (experiments it took part in,
    canary decisions) under `lineage`."""
    from streamrec import lineage

    root = Settings().registry
    try:
        manifest = json.loads(registry.read_manifest(root, version).to_json())
    except BundleError as exc:
        _fail(registry.refusal_reason(exc))
    body = {**manifest, "lineage": lineage.read(root, version)}
    typer.echo(json.dumps(body, indent=2, sort_keys=True))


def model_verify(version: str) -> None:
    """Check every checksum, open the models and run a smoke inference."""
    try:
        registry.load(Settings().registry, version)
    except BundleError as exc:
        _fail(f"refused: {registry.refusal_reason(exc)}")
    typer.echo(f"{version}: checksums match, smoke inference passed")


def model_current() -> None:
    """The version CURRENT names."""
    try:
        version = registry.current_version(Settings().registry)
    except BundleError as exc:
        _fail(registry.refusal_reason(exc))
    if version is None:
        _fail("no current version")
    typer.echo(version)


def model_rollback(
    version: str = typer.Argument(None, help="Default: the current version's parent."),
) -> None:
    """Open an earlier version (verify, smoke inference), then point CURRENT at it; a
    version that does not open is refused and CURRENT stays."""
    try:
        typer.echo(f"current is now {registry.rollback(Settings().registry, version)}")
    except BundleError as exc:
        _fail(f"refused: {registry.refusal_reason(exc)}")


def eval_offline(
    data: Path = typer.Option(
        ...,
        help="An SR-GNN folder (train_sessions.txt, test.txt), such as the shared data's "
        "yoochoose1_64.",
    ),
    quick: bool = typer.Option(False, help="One encoder epoch: minutes, not the full result."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """P@20 and MRR@20 (full ranking) for popularity, item-kNN, retriever, retriever + ranker."""
    from retrain.offline import quick_plan, run_offline
    from retrain.training import train_plan

    plan = train_plan(Settings())
    plan = quick_plan(plan) if quick else plan
    results, _ = run_offline(data, plan, progress=not quiet)
    typer.echo(f"{'model':<18}{'P@20':>8}{'MRR@20':>8}")
    for name, metrics in results["models"].items():
        typer.echo(f"{name:<18}{metrics['p20']:>8.2f}{metrics['mrr20']:>8.2f}")
    typer.echo(f"train {results['train_seconds']}s, peak RSS {results['peak_rss_mb']} MB")


def bench_offline(
    data: Path | None = typer.Option(
        None, help="An SR-GNN folder; default: the shared data's yoochoose1_64 beside the checkout."
    ),
    quick: bool = typer.Option(False, help="One encoder epoch: checks the bench, not the result."),
    out: Path = typer.Option(Path("bench/reports"), help="Where offline.md/.json and PNGs go."),
) -> None:
    """Run the offline evaluation and write bench/reports/offline.{md,json} and curves."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.offline import run_bench
    from bench.scenarios.data import YOOCHOOSE, shared

    data = data or shared(YOOCHOOSE)

    report = run_bench(data, out, quick=quick)
    typer.echo(f"wrote {report}")


def eval_prequential(
    data: Path = typer.Option(..., help="Events to replay and score, in time order."),
    history: Path | None = typer.Option(
        None, help="Events replayed (not scored) before DATA; default: DATA's first 20%."
    ),
    fmt: FileFormat | None = typer.Option(None, "--format", help="Default: detected."),
    variants: str = typer.Option(
        "trending,frozen,realtime,retrain",
        help="Which of the four to run, comma-separated; '' or 'none': no pipeline at all.",
    ),
    baselines: str = typer.Option(
        "all",
        help="Online baselines scored in-process on the same replay, comma-separated "
        "(latest, cooc, vsknn, latest+cooc, cooc+latest, latest+cooc:sum); '' or 'none': none.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N events."),
    max_per_category: int | None = typer.Option(
        None,
        min=0,
        help="Ask every /recommend for at most this many items of a category "
        "(default: the server's setting).",
    ),
    retrain_every: int = typer.Option(
        0, min=0, help="Retrain after this many applied events; 0: a sixth of the scored."
    ),
    out: Path | None = typer.Option(None, help="Also write the results as JSON here."),
    workdir: Path | None = typer.Option(
        None, help="Keep the private stack's logs, archives and registries here."
    ),
) -> None:
    """Replay DATA through a private live pipeline; before each event ask /recommend
    for its user and score hit@20 and MRR@20. Compares trending only, a model frozen
    after the warm-up, that model with real-time state, and real-time state plus
    retraining, beside online baselines (latest items, co-occurrence, V-SKNN, blends)
    on the same replay; then the same by case and by event type."""
    import shutil
    import tempfile

    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.live_replay import CASE_GROUPS, Plan, load_replay, run
    from bench.prequential import exposure_lines
    from retrain.online_baselines import BASELINES

    replay = load_replay(data, history, limit=limit, fmt=fmt)
    root = workdir or Path(tempfile.mkdtemp(prefix="streamrec-prequential-"))
    try:
        outcome = run(
            replay,
            root,
            _names(variants),
            Plan(retrain_every_events=retrain_every, max_per_category=max_per_category),
            baselines=list(BASELINES) if baselines == "all" else _names(baselines),
        )
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    results = [*outcome.variants, *outcome.baselines]
    width = max([10, *(len(r.variant) + 2 for r in results)])
    typer.echo(f"{'':<{width}}{'hit@20':>8}{'MRR@20':>8}{'events':>9}{'errors':>8}")
    for result in results:
        row = result.summary()
        typer.echo(
            f"{result.variant:<{width}}{row['hr20']:>8.2f}{row['mrr20']:>8.2f}"
            f"{row['events']:>9,}{row['errors']:>8}"
        )
    breakdown = outcome.breakdown()
    groups = next(iter(breakdown.values()), {})
    tables = (
        ("case", [g for g in CASE_GROUPS if g in groups]),
        ("event type", [g for g in groups if g not in CASE_GROUPS]),
    )
    for title, names in tables if groups else ():
        headers = [f"{name} ({groups[name]['events']:,})" for name in names]
        typer.echo(f"\nby {title}: hit@20 / MRR@20 (events)")
        typer.echo(f"{'':<{width}}" + "".join(f"{header:>20}" for header in headers))
        for result_name, cells in breakdown.items():
            row_cells = [_cell(cells[name]["hr20"], cells[name]["mrr20"]) for name in names]
            typer.echo(f"{result_name:<{width}}" + "".join(f"{cell:>20}" for cell in row_cells))
    typer.echo("")
    typer.echo("\n".join(exposure_lines(outcome.exposure)))
    if out is not None:
        report = {
            "variants": {r.variant: r.summary() for r in outcome.variants},
            "baselines": {r.variant: r.summary() for r in outcome.baselines},
            "breakdown": breakdown,
            "exposure": outcome.exposure,
        }
        out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def _names(option: str) -> list[str]:
    """A comma-separated option's names; '' and 'none' name nothing."""
    names = [name.strip() for name in option.split(",") if name.strip()]
    return [] if names == ["none"] else names


def _cell(hr20: float | None, mrr20: float | None) -> str:
    return "-" if hr20 is None or mrr20 is None else f"{hr20:.2f} / {mrr20:.2f}"


def bench_prequential(
    quick: bool = typer.Option(
        False, help="2,000 events of each dataset: minutes, not the result."
    ),
    limit: int | None = typer.Option(None, min=1, help="Score at most N events per dataset."),
    canary: bool = typer.Option(
        False,
        "--canary",
        help="Instead: the canary run on the yoochoose replay (a good and a bad candidate "
        "at 10% of users, 50% with --quick) until the decision; writes "
        "bench/reports/canary.{md,json}.",
    ),
) -> None:
    """The prequential replay on yoochoose_sessions (test day) and taobao_stream;
    writes bench/reports/prequential.{md,json,png}."""
    from cli.checkout import bench_on_path

    bench_on_path()
    if canary:
        from bench.canary import run_bench as run_canary

        typer.echo(f"wrote {run_canary(quick=quick, limit=limit)}")
        return
    from bench.prequential import run_bench

    typer.echo(f"wrote {run_bench(quick=quick, limit=limit)}")


def bench_retrain(
    events: int = typer.Option(1_000_000, min=1000, help="New archived events to train on."),
    quick: bool = typer.Option(False, help="100,000 events instead."),
) -> None:
    """Time one warm `streamrec retrain` cycle on a million archived events;
    writes bench/reports/retrain.{md,json}."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.retrain import run_bench

    typer.echo(f"wrote {run_bench(events, quick)}")
