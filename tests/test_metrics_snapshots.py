"""Metrics snapshots between processes and the collector: an idle source's series never vanish,
a dead source's do (times are passed in, never waited for)."""

from __future__ import annotations

from atomr.observability.metrics import REFRESH_S, STALE_AFTER_S, HttpMetrics, SnapshotStore


def _series(store: SnapshotStore, now: float) -> dict[str, float]:
    return {f"{s.name}{sorted(s.labels.items())}": s.value for fam in store.merged(now) for s in fam.samples}


def test_an_idle_source_sends_its_unchanged_snapshot_again_before_the_collector_forgets_it() -> None:
    assert REFRESH_S < STALE_AFTER_S / 2  # a refresh can be late once and still arrive in time
    http = HttpMetrics("127.0.0.1:8080")
    http.record("/v1/chat/completions", 200)
    assert http.take_snapshot(now=1000.0) is not None
    assert http.take_snapshot(now=1001.0) is None  # nothing changed: nothing sent
    assert http.take_snapshot(now=1000.0 + REFRESH_S - 0.1) is None
    again = http.take_snapshot(now=1000.0 + REFRESH_S)  # idle, but due: the same values again
    assert again is not None
    values = {s.name: s.value for fam in again for s in fam.samples if s.name.endswith("_total")}
    assert values == {"atomr_http_requests_total": 1.0}
    http.record("/v1/chat/completions", 200)
    assert http.take_snapshot(now=1000.0 + REFRESH_S + 1) is not None  # a change goes at once


def test_the_store_keeps_a_refreshed_source_and_forgets_a_silent_one() -> None:
    store = SnapshotStore()
    live, dead = HttpMetrics("127.0.0.1:8080"), HttpMetrics("127.0.0.1:8081")
    for http in (live, dead):
        http.record("/v1/completions", 404)
        store.put(http.source, http.take_snapshot(now=0.0) or [], now=0.0)
    key = "atomr_http_requests_total[('route', '/v1/completions'), ('status', '404')]"
    assert _series(store, now=1.0) == {key: 2.0}  # both fronts' counts added up
    t = 0.0
    while t < 2 * STALE_AFTER_S:  # the live front ships every second, the dead one never again
        t += 1.0
        families = live.take_snapshot(now=t)
        if families is not None:
            store.put(live.source, families, now=t)
        assert _series(store, now=t) == {key: 1.0 if t > STALE_AFTER_S else 2.0}, t
