"""The demo shop's catalogue: valid records, the categories its shoppers browse, stock-outs
and new arrivals inside the simulated span."""

from __future__ import annotations

from devtools.simulator import START_MS, simulate, simulate_catalogue
from streamrec.items import ItemRecord, parse_item


def test_the_catalogue_matches_the_simulated_shop() -> None:
    events = list(simulate(n_events=3000))
    until_ms = events[-1].ts_ms
    records = simulate_catalogue(until_ms=until_ms)
    assert records == simulate_catalogue(until_ms=until_ms)  # deterministic per seed
    assert [r.ts_ms for r in records] == sorted(r.ts_ms for r in records)
    assert all(START_MS <= r.ts_ms <= until_ms for r in records)
    assert all(parse_item(r.to_json()) == r for r in records)  # each one valid on the wire

    first: dict[str, ItemRecord] = {}
    for record in records:
        first.setdefault(record.item_id, record)
    for event in events:  # every item browsed is in the catalogue, in the category browsed
        assert event.context is not None
        assert first[event.item_id].categories == (event.context["category"],)
    arrivals = {item for item, r in first.items() if r.ts_ms > START_MS}
    assert len(arrivals) == 30 and not arrivals & {e.item_id for e in events}
    assert all(r.title and r.price and r.tags for r in records)

    outs = [r for r in records if not r.available]
    assert len(outs) == 15
    for out in outs:
        later = [r for r in records if r.item_id == out.item_id and r.ts_ms > out.ts_ms]
        assert all(isinstance(r, ItemRecord) and r.available for r in later)
    assert any(
        r.available and r.ts_ms > out.ts_ms for out in outs for r in records
        if r.item_id == out.item_id
    ), "some stock-outs are restocked"  # fmt: skip
