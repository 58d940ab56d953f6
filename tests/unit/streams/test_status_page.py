"""The worker's status page without a worker: rates from counter samples, the facts gathered from the worker's
parts, and the HTML rendered from them (escaped, self-contained, readable times and units)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from schemas.drift import DriftRecord, DriftStatistic
from schemas.routes import RouteSpec
from streams import metrics
from streams.drift.alerts import AlertDebouncer
from streams.settings import Settings
from streams.worker.health import Health
from streams.worker.status_page import (
    Counters,
    StatusPage,
    models_served,
    read_counters,
    render,
    render_body,
    render_missing_report,
)

NOW_MS = 1_714_564_803_000  # 2024-05-01 12:00:03 UTC


def events_at(t: float) -> float:
    return 100.0 * min(t, 8.0)  # 100 events/s for 8 s, then nothing


def clocked(times: list[float]) -> StatusPage:
    clock = iter(times)
    state = {"t": 0.0}

    def now() -> float:
        state["t"] = next(clock)
        return state["t"]

    def read() -> Counters:
        t = state["t"]
        return Counters(events_at(t), {"m@1": events_at(t) * 0.9, "m@2": events_at(t) * 0.1},
                        {"not_json": t, "non_finite": 2 * t})

    return StatusPage(window_s=10.0, now=now, read=read)


def test_rates_span_the_window_then_slide_on() -> None:
    page = clocked([0, 2, 4, 6, 8, 10, 12, 20])
    answers = [page.throughput() for _ in range(7)]
    # at t=2: since the page object was made (t=0)
    assert (answers[0]["interval_s"], answers[0]["events_in_per_s"]) == (2.0, 100.0)
    # at t=12 the oldest sample kept is t=2 (the newest one at least 10 s old): (800 - 200) / 10 s
    assert (answers[5]["interval_s"], answers[5]["events_in_per_s"]) == (10.0, 60.0)
    assert answers[5]["predictions_by_model"] == {"m@1": {"total": 720, "per_s": 54.0},
                                                  "m@2": {"total": 80, "per_s": 6.0}}
    assert answers[5]["predictions_total"] == 800 and answers[5]["predictions_per_s"] == 60.0
    last = answers[6]  # t=20: the baseline is t=10, nothing consumed since
    assert (last["interval_s"], last["events_in_per_s"], last["events_in_total"]) == (10.0, 0.0, 800)
    # dead letters by reason, most frequent first: 40 non_finite and 20 not_json at t=20, 1 and 2 per second
    assert last["dead_letters"] == [{"reason": "non_finite", "total": 40, "per_s": 2.0, "share": 0.05},
                                    {"reason": "not_json", "total": 20, "per_s": 1.0, "share": 0.025}]
    assert (last["dead_letters_total"], last["dead_letters_per_s"]) == (60, 3.0)
    assert [t for t, _ in page.samples] == [10, 12, 20]  # older samples are dropped: memory stays bounded


def test_two_answers_at_the_same_instant_give_zero_rates_not_an_error() -> None:
    page = StatusPage(now=lambda: 5.0, read=lambda: Counters(10, {}, {}))
    assert page.throughput()["events_in_per_s"] == 0.0 and page.throughput()["interval_s"] == 0.0


def test_read_counters_sums_the_process_counters_by_model_and_reason() -> None:
    before = read_counters()
    metrics.EVENTS_IN.labels("unit-status-a").inc(5)
    metrics.EVENTS_IN.labels("unit-status-b").inc(2)
    metrics.PREDICTIONS_OUT.labels("unit-model", "7").inc(6)
    metrics.DEAD_LETTERS.labels("unit-status-a", "unit_reason").inc(1)
    metrics.DEAD_LETTERS.labels("unit-status-b", "unit_reason").inc(3)  # one reason, two topics: summed
    after = read_counters()
    assert after.events_in - before.events_in == 7
    assert after.predictions["unit-model@7"] - before.predictions.get("unit-model@7", 0) == 6
    assert after.dead_letters["unit_reason"] - before.dead_letters.get("unit_reason", 0) == 4


# --- the facts --------------------------------------------------------------------------------------
def scorer(version: str) -> SimpleNamespace:
    return SimpleNamespace(name="risk", version=version, sha256=f"{version}" * 64)


def lane(spec: RouteSpec, arms: dict[str, str], shadow: dict[str, str] | None = None) -> SimpleNamespace:
    shadow = shadow or {}
    return SimpleNamespace(spec=spec, policy=SimpleNamespace(arms=tuple(arms), shadow_arms=tuple(shadow)),
                           scorers=tuple(scorer(v) for v in arms.values()),
                           shadow_scorers=tuple(scorer(v) for v in shadow.values()))


def test_models_served_static_and_every_routing_policy() -> None:
    static = models_served(SimpleNamespace(pipeline=SimpleNamespace(router=None), scorer=scorer("1"), registry=None))
    assert static["mode"] == "static"
    assert [(r["route"], r["model"], r["share"]) for r in static["routes"]] == [("all input topics", "risk@1", 1.0)]

    table = SimpleNamespace(generation=4, default=lane(
        RouteSpec(policy="ab", variants={"champion": 90, "challenger": 10}), {"champion": "1", "challenger": "2"}),
        routes={"eu": lane(RouteSpec(policy="canary", percent=25), {"champion": "1", "challenger": "3"}),
                "old": lane(RouteSpec(policy="canary", percent=25, rolled_back="error rate 0.4 > 0.2"),
                            {"champion": "1", "challenger": "3"}),
                "us": lane(RouteSpec(policy="shadow"), {"champion": "1"}, {"challenger": "2"}),
                "x": lane(RouteSpec(policy="bandit", arms=["1", "2"]), {"1": "1", "2": "2"})})
    worker = SimpleNamespace(pipeline=SimpleNamespace(router=SimpleNamespace(table=table)), scorer=scorer("1"),
                             registry=SimpleNamespace(watcher=SimpleNamespace(swaps=3, last_error=None)))
    served = models_served(worker)
    assert (served["mode"], served["generation"], served["swaps"]) == ("registry", 4, 3)
    rows = [(r["route"], r["policy"], r["arm"], r["model"], r["share"], r["role"]) for r in served["routes"]]
    assert rows == [
        ("default", "ab", "champion", "risk@1", 0.9, "serves"),
        ("default", "ab", "challenger", "risk@2", 0.1, "serves"),
        ("eu", "canary", "champion", "risk@1", 0.75, "serves"),
        ("eu", "canary", "challenger", "risk@3", 0.25, "serves"),
        ("old", "canary", "champion", "risk@1", 1.0, "serves"),
        ("old", "canary", "challenger", "risk@3", 0.0, "serves"),
        ("us", "shadow", "champion", "risk@1", 1.0, "serves"),
        ("us", "shadow", "challenger", "risk@2", None, "shadow"),
        ("x", "bandit", "1", "risk@1", None, "serves"),
        ("x", "bandit", "2", "risk@2", None, "serves"),
    ]
    assert served["routes"][5]["note"] == "rolled back: error rate 0.4 > 0.2"
    page = render_body({"generated_at_ms": NOW_MS, "models": served})
    assert "risk@3" in page and "75%" in page and "25%" in page and "learned" in page and ">shadow<" in page


def drift_record(status: str, computed_at: int, feature: str = "amount") -> DriftRecord:
    stat = DriftStatistic(kind="feature", feature=feature, statistic="psi", value=0.31, warn_threshold=0.1,
                          alert_threshold=0.25, status=status)
    return DriftRecord(model_name="risk", model_version="1", model_sha256="1" * 64, profile_sha256="2" * 64,
                       worker="w-1", computed_at=computed_at, window_start_ms=computed_at - 60_000,
                       window_end_ms=computed_at - 1000, window_events=2000, window_invalid=3, window_scored=1997,
                       offsets=[], statistics=[stat], status=status)


def fake_worker(drift_record_: DriftRecord | None, alert: object = None, drift_on: bool = True) -> SimpleNamespace:
    settings = Settings(worker_id="w-1", engine="batch")
    monitor = SimpleNamespace(settings=settings, last_record=drift_record_, last_alert=alert,
                              recent=[drift_record_] if drift_record_ else [])
    drift = SimpleNamespace(monitor=monitor, status=lambda: {
        "status": drift_record_.status if drift_record_ else None, "model": "risk@1", "window_events": 2000,
        "messages_seen": 4400, "sampled_out": 0, "last_computed_at": drift_record_.computed_at if drift_record_
        else None})
    health = Health({"scoring": lambda: {"healthy": True}, "archiver": lambda: {"healthy": False,
                                                                                "reason": "archiver process exited"}})
    return SimpleNamespace(
        settings=settings, scorer=scorer("1"), pipeline=SimpleNamespace(router=None), health=health,
        lag=SimpleNamespace(lags={("features", 0): 120, ("features", 1): 0}, broker_reachable=True,
                            last_answer_age_s=0.4),
        drift=drift if drift_on else None, archiver=None, registry=None, learning=None, started_at=1.0, ready=True)


def test_status_is_json_and_the_page_shows_it_readably_and_escaped() -> None:
    record = drift_record("alert", NOW_MS - 3000, feature="<script>alert(1)</script>")
    alert = AlertDebouncer().observe(record)[0]
    counts = iter([Counters(0, {}, {}), Counters(3000, {"risk@1": 2990}, {"not_json": 7, "<b>odd</b>": 3})])
    clock = iter([0.0, 10.0])
    page = StatusPage(now=clock.__next__, read=counts.__next__)
    status = page.status(fake_worker(record, alert))
    status["generated_at_ms"] = NOW_MS  # the page's "ago" is relative to when the answer was made
    assert json.loads(json.dumps(status)) == status  # /status.json serves exactly this
    assert status["lag"]["total"] == 120 and status["health"]["failing"] == ["archiver"]
    assert status["drift"]["alert"]["state"] == "firing" and status["drift"]["alert"]["notice"] == 1

    html = render(status)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=\"?https?:|<link|@import", html)  # self-contained: nothing fetched elsewhere
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>odd</b>" not in html and "&lt;b&gt;odd&lt;/b&gt;" in html
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    for shown in ("risk@1", "all input topics", "300 events/s", "299 /s", "1 /s", "3,000 events since start",
                  "120 records", "archiver process exited", "0.7 /s", "not_json", "latest alert:", "firing",
                  "2024-05-01 12:00:00 UTC (3 s ago)", "2,000 events", "Full drift report (1 record in memory)"):
        assert shown in text, shown
    assert 'id="tile-drift"' in html and ">alert<" in html
    assert "setInterval(refresh,2000)" in html and "/?fragment=1" in html


def test_pages_for_drift_off_no_record_yet_and_nothing_measured() -> None:
    off = render(StatusPage().status(fake_worker(None, drift_on=False)))
    assert "drift monitoring is off" in off
    pending = StatusPage().status(fake_worker(None))
    pending["lag"] = {"total": None, "partitions": [], "broker_reachable": False, "broker_answered_s_ago": None}
    page = render(pending)
    assert "no drift record yet: the lane has seen 4,400 inputs; a record needs a window of 2,000 events" in page
    assert "no alert since this worker started" in page and "not measured yet" in page
    assert "broker not answering" in page
    assert "no drift record yet: the first one needs a window of 2,000 input events" in render_missing_report(
        True, 2000)
    assert "drift monitoring is off" in render_missing_report(False, 2000)


def test_web_bind_is_a_setting_with_the_container_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().web_bind == "0.0.0.0"
    monkeypatch.setenv("STREAMSCORE_WEB_BIND", "127.0.0.1")
    assert Settings().web_bind == "127.0.0.1"
    monkeypatch.setenv("STREAMSCORE_WEB_BIND", "")
    with pytest.raises(ValidationError, match="web_bind"):
        Settings()
