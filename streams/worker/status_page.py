"""The worker's live status page at ``/``: one self-contained HTML page a person can open, no build step.

    GET /             this page (HTML; a few lines of vanilla JS re-fetch /status.json every 2 s)
    GET /status.json  the same facts as JSON (what the page renders)
    GET /drift/report the drift report of the records held in memory (streams/drift/report.py)

``StatusPage.status(worker)`` gathers the facts into one plain dict: served model versions and routes,
throughput, consumer lag, dead letters by reason, drift status and the latest alert, health of every part.
``render(status)`` turns that dict into the page; it does no I/O and reads no clock of its own, so a test
renders any state it likes. Throughput comes from the Prometheus counters of ``streams.metrics``: the page
object keeps the samples of the last ``window_s`` seconds, and a rate is the difference between the newest
and the oldest of them (the first answer measures since the page object was made, at worker start).

>>> page = StatusPage(now=iter([0.0, 4.0]).__next__, read=iter([Counters(0, {}, {}),
...                   Counters(400, {"m@1": 396}, {"not_json": 4})]).__next__)
>>> t = page.throughput()
>>> t["interval_s"], t["events_in_per_s"], t["predictions_per_s"], t["dead_letters"][0]["per_s"]
(4.0, 100.0, 99.0, 1.0)
>>> html = render({"generated_at_ms": 0, "worker": {"name": "w"}, "throughput": t})
>>> html.startswith("<!DOCTYPE html>"), "400 events since start" in html
(True, True)
"""

from __future__ import annotations

import html
import json
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from streams import metrics

__all__ = ["Counters", "StatusPage", "read_counters", "render", "render_missing_report"]

Status = dict[str, Any]
COLOUR = {"ok": "#2e7d32", "warn": "#b26a00", "alert": "#c62828", "failing": "#c62828", "off": "#757575"}


# --- throughput from the counters ----------------------------------------------------------------------
@dataclass(frozen=True)
class Counters:
    """One reading of the flow's counters: inputs consumed, predictions by model@version, dead letters by reason."""

    events_in: float
    predictions: Mapping[str, float]
    dead_letters: Mapping[str, float]


def _totals(counter: Any, key: Callable[[Mapping[str, str]], str] | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                name = key(sample.labels) if key else ""
                out[name] = out.get(name, 0.0) + sample.value
    return out


def read_counters() -> Counters:
    """The process's counters now (``streams.metrics``: EVENTS_IN, PREDICTIONS_OUT, DEAD_LETTERS)."""
    return Counters(
        events_in=sum(_totals(metrics.EVENTS_IN).values()),
        predictions=_totals(metrics.PREDICTIONS_OUT, lambda labels: f"{labels['model']}@{labels['version']}"),
        dead_letters=_totals(metrics.DEAD_LETTERS, lambda labels: labels["reason"]),
    )


def _per_s(delta: float, seconds: float) -> float:
    return round(delta / seconds, 1) if seconds > 0 else 0.0


# --- the worker's facts -------------------------------------------------------------------------------
class WorkerView(Protocol):
    """What the page reads from ``streams.worker.app.Worker`` (not imported: app.py imports this module)."""

    settings: Any
    scorer: Any
    pipeline: Any
    health: Any
    lag: Any
    drift: Any
    archiver: Any
    registry: Any
    learning: Any
    started_at: float

    @property
    def ready(self) -> bool: ...


class StatusPage:
    """Keeps the counter samples of the last ``window_s`` seconds; ``status(worker)`` is one answer of the page."""

    def __init__(self, window_s: float = 10.0, now: Callable[[], float] = time.monotonic,
                 read: Callable[[], Counters] = read_counters) -> None:
        self.window_s = window_s
        self.now, self.read = now, read
        self.samples: deque[tuple[float, Counters]] = deque([(now(), read())])

    def throughput(self) -> Status:
        """Rates between the oldest sample of the window and now (then the window slides on)."""
        now, current = self.now(), self.read()
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()  # keep one sample at least window_s old: the rate then spans the whole window
        then, before = self.samples[0]
        self.samples.append((now, current))
        seconds = now - then
        dead_total = sum(current.dead_letters.values())
        reasons = sorted(current.dead_letters, key=lambda r: (-current.dead_letters[r], r))
        return {
            "interval_s": round(seconds, 1),
            "events_in_total": int(current.events_in),
            "events_in_per_s": _per_s(current.events_in - before.events_in, seconds),
            "predictions_total": int(sum(current.predictions.values())),
            "predictions_per_s": _per_s(sum(current.predictions.values()) - sum(before.predictions.values()),
                                        seconds),
            "predictions_by_model": {m: {"total": int(n), "per_s": _per_s(n - before.predictions.get(m, 0.0), seconds)}
                                     for m, n in sorted(current.predictions.items())},
            "dead_letters_total": int(dead_total),
            "dead_letters_per_s": _per_s(dead_total - sum(before.dead_letters.values()), seconds),
            "dead_letters": [{"reason": r, "total": int(current.dead_letters[r]),
                              "per_s": _per_s(current.dead_letters[r] - before.dead_letters.get(r, 0.0), seconds),
                              "share": round(current.dead_letters[r] / current.events_in, 4) if current.events_in
                              else None} for r in reasons],
        }

    def status(self, worker: WorkerView) -> Status:
        """Everything the page shows, as JSON-ready values (times as epoch ms; the page makes them readable)."""
        settings = worker.settings
        report = worker.health.report()
        lags = worker.lag.lags
        drift = worker.drift
        return {
            "generated_at_ms": time.time_ns() // 1_000_000,
            "worker": {"name": settings.worker_name, "pid": os.getpid(), "engine": settings.engine,
                       "app_id": settings.app_id, "started_at_ms": int(worker.started_at * 1000),
                       "ready": worker.ready, "broker": settings.bootstrap_servers,
                       "input_topics": dict(settings.input_topics), "prediction_topic": settings.prediction_topic,
                       "dead_letter_topic": settings.dead_letter_topic},
            "health": {"status": report["status"], "failing": report["failing"],
                       "parts": {name: {"healthy": bool(part.get("healthy")),
                                        "reason": part.get("reason") or part.get("last_error")}
                                 for name, part in report["parts"].items()}},
            "models": models_served(worker),
            "throughput": self.throughput(),
            "lag": {"total": sum(lags.values()) if lags else None,
                    "partitions": [{"topic": t, "partition": p, "lag": n} for (t, p), n in sorted(lags.items())],
                    "broker_reachable": worker.lag.broker_reachable,
                    "broker_answered_s_ago": worker.lag.last_answer_age_s},
            "drift": None if drift is None else drift_status(drift),
            "archiver": worker.archiver.status() if worker.archiver is not None else None,
            "learning": worker.learning.status() if worker.learning is not None else None,
        }


def models_served(worker: WorkerView) -> Status:
    """Which model version scores which input topic, with what share (and which ones are scored aside)."""
    router = worker.pipeline.router
    if router is None:  # no registry: the worker's own model scores every input topic
        s = worker.scorer
        return {"mode": "static", "generation": None, "swaps": None, "last_error": None, "routes": [
            {"route": "all input topics", "policy": "single", "arm": "-", "model": f"{s.name}@{s.version}",
             "sha256": s.sha256, "share": 1.0, "role": "serves"}]}
    table = router.table
    lanes = [("default", table.default), *sorted(table.routes.items())]
    rows = []
    for name, lane in lanes:
        spec = lane.spec
        shares = _shares(spec, lane.policy.arms)
        for arm, scorer in zip(lane.policy.arms, lane.scorers, strict=True):
            rows.append({"route": name, "policy": spec.policy, "arm": arm, "model": f"{scorer.name}@{scorer.version}",
                         "sha256": scorer.sha256, "share": shares.get(arm), "role": "serves"})
        for arm, scorer in zip(lane.policy.shadow_arms, lane.shadow_scorers, strict=True):
            rows.append({"route": name, "policy": spec.policy, "arm": arm, "model": f"{scorer.name}@{scorer.version}",
                         "sha256": scorer.sha256, "share": None, "role": "shadow"})
        if spec.rolled_back:
            rows[-1]["note"] = f"rolled back: {spec.rolled_back}"
    registry = worker.registry
    watcher = registry.watcher if registry is not None else None
    return {"mode": "registry", "generation": table.generation, "swaps": getattr(watcher, "swaps", None),
            "last_error": getattr(watcher, "last_error", None), "routes": rows}


def _shares(spec: Any, arms: Sequence[str]) -> dict[str, float | None]:
    """The planned share of entities per arm (a bandit's shares are learned: None)."""
    if spec.policy == "ab":
        total = sum(spec.variants.values())
        return {arm: spec.variants.get(arm, 0.0) / total for arm in arms}
    if spec.policy == "canary":
        percent = 0.0 if spec.rolled_back else spec.percent / 100
        return {spec.baseline: 1 - percent, spec.candidate: percent}
    if spec.policy == "bandit":
        return {}
    return {arms[0]: 1.0} if arms else {}


def drift_status(drift: Any) -> Status:
    """The drift lane's status, its latest record's non-ok statistics and its latest alert notice."""
    monitor, record, alert = drift.monitor, drift.monitor.last_record, drift.monitor.last_alert
    flagged = [] if record is None else [
        {"feature": s.feature if s.kind == "feature" else f"{s.kind}:{s.feature}", "statistic": s.statistic,
         "value": s.effect if s.effect is not None else s.value, "alert_threshold": s.alert_threshold,
         "status": s.status} for s in record.statistics if s.status != "ok"]
    return {
        **drift.status(),
        "window_size": monitor.settings.drift_window,
        "interval_s": monitor.settings.drift_interval_s,
        "records_in_memory": len(monitor.recent),
        "window_start_ms": record.window_start_ms if record else None,
        "window_end_ms": record.window_end_ms if record else None,
        "flagged": flagged,
        "alert": None if alert is None else {
            "alert_id": alert.alert_id, "state": alert.state, "notice": alert.notice, "status": alert.status,
            "started_at_ms": alert.started_at, "emitted_at_ms": alert.emitted_at, "reasons": alert.reasons,
            "retrain_request_id": alert.retrain_request_id},
    }


# --- rendering ----------------------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value))


def iso(ms: int | None) -> str:
    """``2024-05-01 12:00:03 UTC`` for epoch milliseconds ('–' for none).

    >>> iso(1_714_564_803_000), iso(None)
    ('2024-05-01 12:00:03 UTC', '–')
    """
    if not ms:
        return "–"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ms: int | None, now_ms: int) -> str:
    """How long before ``now_ms`` that was, the way a person says it.

    >>> [ago(t, 100_000_000) for t in (99_997_000, 99_880_000, 92_000_000, 100_000_000 - 90_000_000, None)]
    ['3 s ago', '2 min ago', '2.2 h ago', '25.0 h ago', '']
    """
    if not ms:
        return ""
    s = max(0.0, (now_ms - ms) / 1000)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def when(ms: int | None, now_ms: int) -> str:
    """An ISO UTC time with how long ago it was, e.g. ``2024-05-01 12:00:03 UTC (3 s ago)``."""
    if not ms:
        return "–"
    return f'<time datetime="{_e(ms)}">{iso(ms)}</time> <span class="ago">({ago(ms, now_ms)})</span>'


def number(x: float | int | None, unit: str = "") -> str:
    """Thousands separated, with its unit; '–' when unknown.

    >>> number(12345.6, "events/s"), number(3, "records"), number(0.25, "s"), number(None)
    ('12,346 events/s', '3 records', '0.25 s', '–')
    """
    if x is None:
        return "–"
    text = f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:,.3g}"
    return f"{text} {unit}".strip()


def _count(n: int | None, noun: str) -> str:
    return number(n, noun if n == 1 else f"{noun}s")


def duration(seconds: float) -> str:
    """An uptime, e.g. ``3 h 2 min``.

    >>> duration(42), duration(150), duration(3 * 3600 + 120)
    ('42 s', '2 min 30 s', '3 h 2 min')
    """
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _badge(status: str | None, text: str | None = None) -> str:
    status = status or "off"
    return f'<span class="badge" style="background:{COLOUR.get(status, "#757575")}">{_e(text or status)}</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], empty: str, cls: str = "") -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _big(x: float | int | None, unit: str) -> str:
    """A tile's number with its unit in small type."""
    return f'{number(x)}<span class="unit"> {_e(unit)}</span>' if x is not None else "–"


def _tile(label: str, value: str, sub: str, id_: str, cls: str = "") -> str:
    return (f'<div class="tile" id="{id_}"><div class="label">{_e(label)}</div>'
            f'<div class="{" ".join(["value", cls]).strip()}">{value}</div><div class="sub">{sub}</div></div>')


def _models(models: Status | None) -> str:
    if not models:
        return ""
    rows = []
    for r in models["routes"]:
        share = "learned" if r["policy"] == "bandit" and r["role"] == "serves" else \
            ("shadow" if r["role"] == "shadow" else f"{r['share']:.0%}" if r["share"] is not None else "–")
        rows.append([_e(r["route"]), _e(r["policy"]), _e(r["arm"]), f"<b>{_e(r['model'])}</b>",
                     f'<code title="{_e(r["sha256"])}">{_e(r["sha256"][:12])}…</code>', _e(share),
                     _e(r.get("note", ""))])
    if models["mode"] == "static":
        how = "fixed model (no registry: STREAMSCORE_REGISTRY_MODEL unset)"
    else:
        how = (f"model registry, routing generation {_e(models['generation'])}, {_e(models['swaps'])} swap(s)"
               + (f', last error: <span class="bad">{_e(models["last_error"])}</span>' if models["last_error"] else ""))
    return (f'<section id="models"><h2>Models and routes</h2><p class="muted">{how}</p>'
            + _table(["route", "policy", "arm", "model", "sha256", "share", ""], rows, "no route") + "</section>")


def _throughput(t: Status | None, worker: Status) -> str:
    if not t:
        return ""
    per_model = _table(["model", "predictions", "rate"], [
        [f"<b>{_e(m)}</b>", number(v["total"]), number(v["per_s"], "/s")]
        for m, v in t.get("predictions_by_model", {}).items()], "no prediction yet")
    dead = _table(["reason", "dead letters", "rate", "share of inputs"], [
        [f"<code>{_e(d['reason'])}</code>", number(d["total"]), number(d["per_s"], "/s"),
         "–" if d["share"] is None else f"{d['share']:.2%}"] for d in t.get("dead_letters", [])],
        "no dead letter: every input so far was valid")
    topics = ", ".join(f"<code>{_e(k)}</code> ({_e(v)})" for k, v in worker.get("input_topics", {}).items())
    return (f'<section id="throughput"><h2>Throughput <span class="muted">over the last '
            f'{number(t["interval_s"], "s")}</span></h2>'
            f'<p class="muted">inputs {topics or "–"} → <code>{_e(worker.get("prediction_topic", ""))}</code>, '
            f'<code>{_e(worker.get("dead_letter_topic", ""))}</code></p><div class="cols"><div><h3>by model</h3>'
            f'{per_model}</div><div><h3>dead letters by reason</h3>{dead}</div></div></section>')


def _lag(lag: Status | None) -> str:
    if not lag:
        return ""
    rows = [[f"<code>{_e(p['topic'])}</code>", _e(p["partition"]), number(p["lag"], "records")]
            for p in lag["partitions"]]
    return ('<section id="lag"><h2>Consumer lag <span class="muted">(every partition of the group)</span></h2>'
            + _table(["topic", "partition", "lag"], rows, "not measured yet (the lag monitor runs every "
                     "STREAMSCORE_LAG_INTERVAL_S)", cls="narrow") + "</section>")


def _drift(drift: Status | None, now_ms: int) -> str:
    if drift is None:
        return ('<section id="drift"><h2>Drift</h2><p class="muted">drift monitoring is off '
                "(STREAMSCORE_DRIFT_WINDOW=0, or the model has no reference profile)</p></section>")
    status = drift.get("status")
    head = (f'<h2>Drift {_badge(status, (status or "no record yet").upper())} '
            f'<span class="muted">of {_e(drift.get("model", ""))}</span></h2>')
    if status is None:
        need = f"a window of {number(drift.get('window_size'), 'events')}" if drift.get("window_size") else "a window"
        seen = number(drift.get("messages_seen"), "inputs")
        body = f'<p class="muted">no drift record yet: the lane has seen {seen}; a record needs {need}.</p>'
    else:
        body = (f'<p>latest record computed {when(drift.get("last_computed_at"), now_ms)} over '
                f'{number(drift.get("window_events"), "events")} (event time {iso(drift.get("window_start_ms"))} → '
                f'{iso(drift.get("window_end_ms"))}); every {number(drift.get("interval_s"), "s")}; '
                f'{number(drift.get("messages_seen"), "inputs")} seen, '
                f'{number(drift.get("sampled_out"), "sampled out")}. '
                f'<a href="/drift/report">Full drift report</a> ({_count(drift.get("records_in_memory"), "record")} '
                "in memory)"
                f"</p>")
        by_feature: dict[str, list[Status]] = {}
        for f in drift.get("flagged", []):
            by_feature.setdefault(f["feature"], []).append(f)
        flagged = []  # one row per feature: its statistics beyond a threshold, worst first
        for feature, stats in by_feature.items():
            stats.sort(key=lambda f: f["status"] != "alert")
            worst = stats[0]["status"]
            cells = " · ".join(
                f'<span class="s-{_e(f["status"])}">{_e(f["statistic"])} {f["value"]:.3g}'
                + ("" if f["alert_threshold"] is None else f' <span class="muted">(alert ≥ {f["alert_threshold"]:g})'
                   "</span>") + "</span>" for f in stats)
            flagged.append([f"<b>{_e(feature)}</b>", _badge(worst), cells])
        body += _table(["feature", "status", "statistics beyond a threshold"], flagged,
                       "every statistic is within its thresholds")
    alert = drift.get("alert")
    if alert is None:
        body += '<p class="muted">no alert since this worker started</p>'
    else:
        state = "firing" if alert["state"] == "firing" else "resolved"
        reasons = "".join(f"<li>{_e(r)}</li>" for r in alert["reasons"])
        retrain = f"; retrain request <code>{_e(alert['retrain_request_id'])}</code>" \
            if alert.get("retrain_request_id") else ""
        body += (f'<div class="alert {state}"><b>latest alert: {_badge("alert" if state == "firing" else "ok", state)}'
                 f'</b> notice {_e(alert["notice"])} of <code>{_e(alert["alert_id"])}</code>, emitted '
                 f'{when(alert["emitted_at_ms"], now_ms)}, firing since {iso(alert["started_at_ms"])}{retrain}'
                 f"<ul>{reasons}</ul></div>")
    return f'<section id="drift">{head}{body}</section>'


def _health(health: Status | None) -> str:
    if not health:
        return ""
    rows = [[_e(name), _badge("ok" if part["healthy"] else "failing", "healthy" if part["healthy"] else "failing"),
             _e(part.get("reason") or "")] for name, part in health["parts"].items()]
    return ('<section id="health"><h2>Parts <span class="muted">(/healthz)</span></h2>'
            + _table(["part", "state", "why"], rows, "no part reports", cls="narrow") + "</section>")


def _lanes(status: Status) -> str:
    rows = []
    archiver, learning = status.get("archiver"), status.get("learning")
    if archiver is not None:
        facts = {k: v for k, v in archiver.items() if k in ("mode", "pid", "alive", "restarts", "data_dir",
                                                            "open_records", "sealed_segments", "records")}
        rows.append(["archiver", _e(", ".join(f"{k} {v}" for k, v in facts.items()))])
    if learning is not None:
        rows.append(["online learning", _e(json.dumps(learning, default=str)[:300])])
    if not rows:
        return ""
    return '<section id="lanes"><h2>Other lanes</h2>' + _table(["lane", "state"], rows, "") + "</section>"


_STYLE = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--line:#e6e6ea;--bg:#f6f7f9}
*{box-sizing:border-box} body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
background:var(--bg);margin:0} header{background:#fff;border-bottom:1px solid var(--line);padding:14px 28px}
header h1{font-size:19px;margin:0 0 2px} main{padding:18px 28px;max-width:1240px}
.muted{color:var(--muted);font-weight:normal;font-size:13px} .bad{color:#c62828}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px;margin-bottom:14px}
.tile{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px;min-width:0}
.tile .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .value{font-size:21px;font-weight:600;margin:2px 0;font-variant-numeric:tabular-nums;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis} .tile .value.text{font-size:16px;white-space:normal;overflow-wrap:anywhere;
line-height:1.3;padding:3px 0} .tile .unit{font-size:13px;font-weight:normal;color:var(--muted)}
.tile .sub{color:var(--muted);font-size:12px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin-bottom:14px}
h2{font-size:15px;margin:0 0 8px} h3{font-size:13px;margin:4px 0 6px;color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums} table.narrow{width:auto;min-width:50%}
th,td{text-align:left;padding:4px 10px 4px 0;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f1f4;padding:1px 4px;border-radius:3px}
.badge{color:#fff;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;vertical-align:1px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px} .ago{color:var(--muted)}
.s-alert{color:#c62828;font-weight:600} .s-warn{color:#b26a00}
.alert{border-left:4px solid #c62828;background:#fdf3f3;padding:8px 12px;margin-top:10px;border-radius:4px}
.alert.resolved{border-color:#2e7d32;background:#f2f8f2} .alert ul{margin:4px 0 0 18px;padding:0}
footer{color:var(--muted);font-size:12px;padding:0 0 20px}
"""

# Re-fetch /status.json every 2 s and swap the page body for the server's rendering of it: no client templates.
_SCRIPT = """
<script>
async function refresh(){
  try{
    const r=await fetch('/?fragment=1',{cache:'no-store'});
    if(!r.ok) throw new Error('HTTP '+r.status);
    document.getElementById('live').innerHTML=await r.text();
    document.body.dataset.refreshes=(+document.body.dataset.refreshes||0)+1;
  }catch(e){document.getElementById('stale').textContent=' — worker not answering ('+e+')';}
}
setInterval(refresh,2000);
</script>
"""


def render_body(status: Status) -> str:
    """The live part of the page (what the script swaps in every 2 s)."""
    now_ms = status.get("generated_at_ms", 0)
    worker = status.get("worker", {})
    health = status.get("health") or {}
    t = status.get("throughput") or {}
    lag = status.get("lag") or {}
    drift = status.get("drift")
    models = status.get("models") or {}
    serving = [r["model"] for r in models.get("routes", []) if r["role"] == "serves"]
    tiles = [
        _tile("health", _badge("ok" if health.get("status") == "ok" else "failing", health.get("status", "unknown")),
              "failing: " + ", ".join(map(_e, health["failing"])) if health.get("failing") else
              ("ready" if worker.get("ready") else "not ready (no partitions yet)"), "tile-health"),
        _tile("serving", f"{_e(serving[0]) if serving else '–'}",
              f"+ {len(set(serving)) - 1} more" if len(set(serving)) > 1 else _e(models.get("mode", "")),
              "tile-model", cls="text"),
        _tile("throughput in", _big(t.get("events_in_per_s"), "events/s"),
              f"{number(t.get('events_in_total'), 'events')} since start", "tile-in"),
        _tile("predictions", _big(t.get("predictions_per_s"), "/s"),
              f"{number(t.get('predictions_total'), 'predictions')} since start", "tile-out"),
        _tile("dead letters", _big(t.get("dead_letters_per_s"), "/s"),
              f"{number(t.get('dead_letters_total'), 'dead letters')} since start", "tile-dead"),
        _tile("consumer lag", _big(lag.get("total"), "records"),
              ("broker answered " + number(lag.get("broker_answered_s_ago"), "s ago")) if lag.get("broker_reachable")
              else ('<span class="bad">broker not answering</span>' if lag else ""), "tile-lag"),
        _tile("drift", _badge(drift.get("status") if drift else "off",
                              (drift.get("status") or "pending") if drift else "off"),
              ("latest alert " + drift["alert"]["state"]) if drift and drift.get("alert") else "no alert",
              "tile-drift"),
    ]
    started = worker.get("started_at_ms")
    up = f"up {duration((now_ms - started) / 1000)}, " if started else ""
    header = (f'<header><h1>streamscore worker {_e(worker.get("name", ""))}</h1><div class="muted">{up}engine '
              f'{_e(worker.get("engine", "–"))}, group <code>{_e(worker.get("app_id", "–"))}</code>, pid '
              f'{_e(worker.get("pid", "–"))}, broker <code>{_e(worker.get("broker", "–"))}</code> · refreshes every '
              f'2 s<span id="stale" class="bad"></span></div></header>')
    return header + '<main>' + "".join([
        f'<div class="tiles">{"".join(tiles)}</div>',
        _models(models), _drift(drift, now_ms), _throughput(t, worker),
        f'<div class="cols">{_lag(lag)}{_health(health)}</div>' if lag or health else "", _lanes(status),
        f'<footer>as of {iso(now_ms)} · <a href="/status.json">status.json</a> · <a href="/metrics">metrics</a> · '
        f'<a href="/healthz">healthz</a> · <a href="/readyz">readyz</a></footer>',
    ]) + "</main>"


def render(status: Status) -> str:
    """The whole page for ``status`` (the dict ``StatusPage.status`` returns): one HTML string, nothing external."""
    title = f"streamscore worker {status.get('worker', {}).get('name', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{_STYLE}</style></head><body>
<div id="live">{render_body(status)}</div>{_SCRIPT}</body></html>
"""


def render_missing_report(drift_on: bool, window: int) -> str:
    """What /drift/report answers before there is anything to report on."""
    why = (f"no drift record yet: the first one needs a window of {window:,} input events"
           if drift_on else "drift monitoring is off (STREAMSCORE_DRIFT_WINDOW=0, or the model has no reference "
           "profile)")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>drift report</title>'
            f"<style>{_STYLE}</style></head><body><main><section><h2>Drift report</h2><p>{_e(why)}.</p>"
            f'<p><a href="/">back to the status page</a></p></section></main></body></html>')
