"""Drift records for people: `streamscore tail drift` lines and the demo's drift summary.

``render_drift`` turns one drift record, alert or retrain request (as parsed JSON) into Rich markup;
a drift record becomes a small table, one line per feature with its PSI, KS, the categorical or
distance statistic, the missing rate and a coloured status.

>>> body = {"model_name": "m", "model_version": "1", "status": "alert", "window_events": 2000,
...         "window_scored": 1990, "window_invalid": 3, "window_start_ms": 0, "window_end_ms": 60_000,
...         "computed_at": 61_000, "statistics": [
...     {"kind": "feature", "feature": "amount", "statistic": "psi", "value": 0.31, "status": "alert"},
...     {"kind": "feature", "feature": "amount", "statistic": "ks", "value": 0.2, "p_value": 1e-9,
...      "status": "alert"}]}
>>> print(render_drift(body, "0:7"))  # doctest: +NORMALIZE_WHITESPACE
0:7 m@1 drift [bold red]ALERT[/] window 2000 events (1990 scored, 3 invalid), event time 00:00:00 → 00:01:00 UTC
    feature                 psi     ks D (p)             chi2 tvd / w1     missing   status
    amount                  [red]0.310[/]   [red]0.200 (1e-09)[/]      -                  -         [bold red]ALERT[/]
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from streams.kafka.reader import read_all
from streams.settings import Settings

__all__ = ["DRIFT_KEYS", "drift_table", "render_drift", "summarize_drift"]

# Top-level keys that tell drift contract records apart from every other record of the flow.
DRIFT_KEYS = ("statistics", "alert_id")
COLOUR = {"ok": "green", "warn": "yellow", "alert": "red"}


def _status(status: str) -> str:
    return f"[bold {COLOUR.get(status, 'white')}]{status.upper()}[/]"


def _hms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M:%S")


def _by_feature(statistics: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for s in statistics:
        name = s["feature"] if s.get("kind", "feature") == "feature" else f"{s['kind']}:{s['feature']}"
        rows.setdefault(name, {})[s["statistic"]] = s
    return rows


def _cell(stat: dict[str, Any] | None, with_p: bool = False, use_effect: bool = False) -> str:
    if stat is None:
        return "-"
    x = stat["effect"] if use_effect and stat.get("effect") is not None else stat["value"]
    text = f"{x:.3f}"
    if with_p and stat.get("p_value") is not None:
        text += f" ({stat['p_value']:.2g})"
    colour = COLOUR.get(stat["status"], "white")
    return f"[{colour}]{text}[/]" if stat["status"] != "ok" else text


def _concept(stats: dict[str, dict[str, Any]]) -> str:
    """The error-stream detectors in one cell: ADWIN's mean error, Page-Hinkley's test value vs lambda."""
    parts = []
    if "adwin" in stats:
        parts.append(f"ADWIN mean error {stats['adwin']['value']:.3f}")
    if "page_hinkley" in stats:
        ph = stats["page_hinkley"]
        parts.append(f"Page-Hinkley {ph['value']:.1f} / {ph.get('alert_threshold') or 0:g}")
    return ", ".join(parts)


def _worst(stats: dict[str, dict[str, Any]]) -> str:
    order = ("ok", "warn", "alert")
    return max((s["status"] for s in stats.values()), key=order.index, default="ok")


def render_drift(body: dict[str, Any], where: str) -> str:
    """Rich markup for a drift record (a table), a drift alert or a retrain request."""
    model = f"{body['model_name']}@{body['model_version']}"
    if "alert_id" in body and "state" in body:
        if body["state"] == "resolved":
            return f"{where} [bold green]RESOLVED[/] {model} alert {body['alert_id']} (notice {body['notice']})"
        retrain = f"  → retrain {body['retrain_request_id']}" if body.get("retrain_request_id") else ""
        return (f"{where} [bold red]ALERT firing[/] {model} notice {body['notice']}: "
                f"{'; '.join(body['reasons'])}{retrain}")
    if "alert_id" in body:  # a retrain request
        return f"{where} [bold]retrain[/] {model} on {body['data_version']}  [dim](alert {body['alert_id']})[/]"
    head = (f"{where} {model} drift {_status(body['status'])} window {body['window_events']} events "
            f"({body['window_scored']} scored, {body['window_invalid']} invalid), event time "
            f"{_hms(body['window_start_ms'])} → {_hms(body['window_end_ms'])} UTC")
    lines = [head, f"    {'feature':<22}  {'psi':<6}  {'ks D (p)':<19}  {'chi2 tvd / w1':<17}  {'missing':<8}  status"]
    for name, stats in _by_feature(body["statistics"]).items():
        if name.startswith("concept:"):
            lines.append(f"    {'concept (labels)':<22}  {_concept(stats)}  {_status(_worst(stats))}")
            continue
        second = _cell(stats.get("chi2"), use_effect=True) if "chi2" in stats else _cell(stats.get("wasserstein"))
        cells = [_cell(stats.get("psi")), _cell(stats.get("ks"), with_p=True), second,
                 _cell(stats.get("missing_rate"))]
        widths = (6, 19, 17, 8)
        padded = [c + " " * max(0, w - _visible_len(c)) for c, w in zip(cells, widths, strict=True)]
        lines.append(f"    {name:<22}  " + "  ".join(padded) + f"  {_status(_worst(stats))}")
    return "\n".join(lines)


def _visible_len(markup: str) -> int:
    from rich.text import Text

    return len(Text.from_markup(markup).plain)


def drift_table(body: dict[str, Any], title: str | None = None) -> Table:
    """A Rich table of one drift record (for the demo and `streamscore drift status`)."""
    table = Table(title=title or f"drift of {body['model_name']}@{body['model_version']}: "
                  f"{body['window_events']} events, status {body['status']}")
    for column in ("feature", "PSI", "KS D (p)", "chi2 TVD / W1 σ", "missing", "status"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for name, stats in _by_feature(body["statistics"]).items():
        if name.startswith("concept:"):
            table.add_row("concept (labels)", _concept(stats), "", "", "", _status(_worst(stats)))
            continue
        second = _cell(stats.get("chi2"), use_effect=True) if "chi2" in stats else _cell(stats.get("wasserstein"))
        table.add_row(name, _cell(stats.get("psi")), _cell(stats.get("ks"), with_p=True), second,
                      _cell(stats.get("missing_rate")), _status(_worst(stats)))
    return table


def summarize_drift(settings: Settings, console: Console, since_ms: int | None = None) -> str | None:
    """Print the latest drift record (as a table) and the alerts and retrain requests since ``since_ms``.

    Returns the latest record's overall status, or None when there is no record yet (drift records
    need a full window: ``min(drift_window, drift_thresholds.min_events)`` events).
    """
    def bodies(topic: str) -> list[dict[str, Any]]:
        try:
            found = [orjson.loads(m.value()) for m in read_all(settings, topic)]
        except KeyError:  # the topic does not exist yet: no worker has monitored drift
            return []
        key = "computed_at" if topic == settings.drift_topic else "emitted_at" \
            if topic == settings.alerts_topic else "requested_at"
        return sorted((b for b in found if since_ms is None or b.get(key, 0) >= since_ms), key=lambda b: b[key])

    console.rule("drift")
    records = bodies(settings.drift_topic)
    if not records:
        console.print(f"no drift record yet on {settings.drift_topic!r} (a window needs "
                      f"{min(settings.drift_window, settings.drift_thresholds.min_events)} events)")
        return None
    latest = records[-1]
    console.print(drift_table(latest, title=f"latest of {len(records)} drift records: "
                              f"{latest['model_name']}@{latest['model_version']}, "
                              f"{latest['window_events']} events"))
    alerts, retrains = bodies(settings.alerts_topic), bodies(settings.retrain_topic)
    for alert in alerts:
        console.print(render_drift(alert, "  "), highlight=False)
    for request in retrains:
        console.print(render_drift(request, "  "), highlight=False)
    statuses = [r["status"] for r in records]
    console.print(f"windows: {statuses.count('ok')} ok, {statuses.count('warn')} warn, {statuses.count('alert')} "
                  f"alert; {len(alerts)} alert notices, {len(retrains)} retrain requests. "
                  f"`streamscore tail {settings.drift_topic}`, `streamscore drift report --out drift.html`")
    return latest["status"]
