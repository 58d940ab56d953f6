"""`streamscore drift report`: one self-contained HTML file (inline SVG, no JavaScript, no extra package).

For the latest drift record it draws, per feature and for the model score, the reference vs current
distribution over the profile's bins (or categories), with the statistics and their status; across
all records read, the PSI and KS of each feature over time against their thresholds, and a strip of
overall statuses.

Records come from the drift topic, or are computed on the spot from the last N messages of the input
topics (``record_from_input``: the same ``DriftMonitor.evaluate`` the worker runs).

>>> from schemas.drift import DriftRecord, DriftStatistic, Histogram
>>> h = Histogram(edges=[1.0], categories=[], reference=[0.5, 0.5], current=[0.2, 0.8])
>>> stat = DriftStatistic(kind="feature", feature="x", statistic="psi", value=0.39, warn_threshold=0.1,
...                       alert_threshold=0.25, status="alert", histogram=h)
>>> record = DriftRecord(model_name="m", model_version="1", model_sha256="0" * 64, profile_sha256="1" * 64,
...                      worker="w", computed_at=0, window_start_ms=0, window_end_ms=0, window_events=2000,
...                      window_invalid=0, window_scored=2000, offsets=[], statistics=[stat], status="alert")
>>> page = render_report([record])
>>> page.startswith("<!DOCTYPE html>"), page.count("<svg")  # the histogram and the status strip
(True, 2)
"""

from __future__ import annotations

import html
import time
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import TopicPartition

from models.onnx_scorer import OnnxScorer
from schemas.drift import DriftRecord, DriftStatistic, decode
from streams.drift.lane import DriftMonitor, load_reference
from streams.kafka import clients
from streams.kafka.reader import read_all
from streams.settings import Settings

__all__ = ["read_records", "record_from_input", "render_report", "write_report"]

COLOUR = {"ok": "#2e7d32", "warn": "#f9a825", "alert": "#c62828"}
REFERENCE, CURRENT = "#9e9e9e", "#1565c0"


def read_records(settings: Settings, limit: int = 500) -> list[DriftRecord]:
    """The last ``limit`` drift records of the drift topic, oldest first."""
    records = [decode(DriftRecord, m.value()) for m in read_all(settings, settings.drift_topic)]
    return sorted(records, key=lambda r: r.computed_at)[-limit:]


def record_from_input(settings: Settings, n_events: int) -> DriftRecord:
    """Drift of the last ``n_events`` input messages (spread over all input partitions), computed here."""
    scorer = OnnxScorer.from_dir(settings.model_dir)
    reference = load_reference(settings.model_dir, scorer.card)
    if reference is None:
        raise ValueError(f"{settings.model_dir} has no reference profile")
    monitor = DriftMonitor(settings.model_copy(update={"drift_window": n_events}), scorer, *reference,
                           worker="streamscore drift report")
    consumer = clients.standalone_consumer(settings.kafka, "streamscore-drift-report")
    try:
        metadata = consumer.list_topics(timeout=10).topics
        partitions = [(t, p) for t in settings.input_topics if t in metadata for p in metadata[t].partitions]
        if not partitions:
            raise KeyError(f"none of the input topics {list(settings.input_topics)} exists")
        share = -(-n_events // len(partitions))  # ceil: the window gets the newest messages of each partition
        assignment, remaining = [], 0
        for topic, partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                assignment.append(TopicPartition(topic, partition, max(low, high - share)))
                remaining += high - max(low, high - share)
        consumer.assign(assignment)
        while remaining > 0:
            batch = clients.records(consumer, 1000, 1.0, where="drift report")
            if not batch:
                break
            for m in batch:
                monitor.add(m.topic(), m.partition(), m.offset(), m.value())
                remaining -= 1
    finally:
        consumer.close()
    record, _ = monitor.evaluate(monitor.window.snapshot())
    return record


# --- SVG ------------------------------------------------------------------------------------------
def _bars(stat: DriftStatistic, width: int = 460, height: int = 170) -> str:
    h = stat.histogram
    assert h is not None
    if h.categories:
        labels = [f"{c:g}" for c in h.categories] + ["other"]
    else:
        edges = [f"{e:.3g}" for e in h.edges]
        labels = [f"<{edges[0]}"] + [f"{a}–{b}" for a, b in zip(edges, edges[1:], strict=False)] + [f"≥{edges[-1]}"]
    n, top = len(labels), max(max(h.reference), max(h.current), 1e-9)
    left, plot_h = 34, height - 46
    slot = (width - left - 6) / n
    parts = [f'<svg width="{width}" height="{height}" role="img">',
             f'<text x="2" y="12" font-size="10">{top:.0%}</text>',
             f'<line x1="{left}" y1="{10 + plot_h}" x2="{width}" y2="{10 + plot_h}" stroke="#555"/>']
    for i, (label, ref, cur) in enumerate(zip(labels, h.reference, h.current, strict=True)):
        x = left + i * slot
        for j, (value, colour) in enumerate(((ref, REFERENCE), (cur, CURRENT))):
            bar = plot_h * value / top
            which = "reference" if j == 0 else "current"
            parts.append(f'<rect x="{x + 2 + j * (slot - 4) / 2:.1f}" y="{10 + plot_h - bar:.1f}" '
                         f'width="{(slot - 4) / 2:.1f}" height="{bar:.1f}" fill="{colour}">'
                         f'<title>{html.escape(label)}: {which} {value:.1%}</title></rect>')
        parts.append(f'<text x="{x + slot / 2:.1f}" y="{height - 22}" font-size="9" text-anchor="middle" '
                     f'transform="rotate(-30 {x + slot / 2:.1f} {height - 22})">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _series(values: list[float], warn: float | None, alert: float | None, width: int = 300, height: int = 80) -> str:
    top = max([*values, alert or 0.0, warn or 0.0, 1e-9]) * 1.1
    n = len(values)

    def xy(i: int, v: float) -> str:
        x = 4 + (width - 8) * (i / (n - 1) if n > 1 else 0.5)
        return f"{x:.1f},{height - 4 - (height - 8) * v / top:.1f}"

    parts = [f'<svg width="{width}" height="{height}" role="img"><rect width="{width}" height="{height}" '
             'fill="#fafafa" stroke="#ddd"/>']
    for level, colour in ((warn, COLOUR["warn"]), (alert, COLOUR["alert"])):
        if level is not None:
            y = height - 4 - (height - 8) * level / top
            parts.append(f'<line x1="0" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="{colour}" '
                         'stroke-dasharray="4 3"/>')
    parts.append(f'<polyline fill="none" stroke="{CURRENT}" stroke-width="1.5" '
                 f'points="{" ".join(xy(i, v) for i, v in enumerate(values))}"/>')
    parts.append(f'<text x="{width - 4}" y="12" font-size="10" text-anchor="end">max {max(values):.3f}</text></svg>')
    return "".join(parts)


def _strip(records: list[DriftRecord], width: int = 940) -> str:
    step = width / max(1, len(records))
    cells = "".join(
        f'<rect x="{i * step:.1f}" y="0" width="{max(step - 1, 1):.1f}" height="18" fill="{COLOUR[r.status]}">'
        f'<title>{_when(r.computed_at)}: {r.status}</title></rect>' for i, r in enumerate(records))
    return f'<svg width="{width}" height="18" role="img">{cells}</svg>'


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stat_row(s: DriftStatistic) -> str:
    x = s.effect if s.effect is not None else s.value
    p = "" if s.p_value is None else f"{s.p_value:.2g}"
    thresholds = " / ".join("–" if t is None else f"{t:g}" for t in (s.warn_threshold, s.alert_threshold))
    return (f"<tr><td>{html.escape(s.statistic)}</td><td>{s.value:.4g}</td><td>{'' if s.effect is None else f'{x:.4g}'}"
            f"</td><td>{p}</td><td>{thresholds}{'' if s.p_threshold is None else f' (p&lt;{s.p_threshold:g})'}</td>"
            f'<td style="color:{COLOUR[s.status]};font-weight:bold">{s.status}</td></tr>')


def render_report(records: list[DriftRecord]) -> str:
    """The HTML page for ``records`` (oldest first; the last one is shown in detail)."""
    if not records:
        raise ValueError("no drift records to report on")
    latest = records[-1]
    subjects: dict[tuple[str, str], list[DriftStatistic]] = {}
    for s in latest.statistics:
        subjects.setdefault((s.kind, s.feature), []).append(s)
    sections = []
    for (kind, feature), stats in subjects.items():
        worst = max((s.status for s in stats), key=("ok", "warn", "alert").index)
        psi = next((s for s in stats if s.statistic == "psi" and s.histogram is not None), None)
        trends = []
        for name in ("psi", "ks", "adwin", "page_hinkley"):
            series = [next((s for s in r.statistics if (s.kind, s.feature, s.statistic) == (kind, feature, name)),
                           None) for r in records]
            values = [s.value for s in series if s is not None]
            if len(values) > 1:
                ref = next(s for s in series if s is not None)
                trends.append(f"<div><b>{name}</b> over {len(values)} windows<br>"
                              f"{_series(values, ref.warn_threshold, ref.alert_threshold)}</div>")
        title = feature if kind == "feature" else f"{kind}: {feature}"
        sections.append(
            f'<section><h2>{html.escape(title)} <span style="color:{COLOUR[worst]}">{worst}</span></h2>'
            f'<div class="row"><div>{_bars(psi) if psi else ""}<div class="legend"><span style="color:{REFERENCE}">'
            f'■ reference</span> <span style="color:{CURRENT}">■ current window</span></div></div>'
            f'<table><tr><th>statistic</th><th>value</th><th>effect</th><th>p</th><th>warn / alert</th>'
            f'<th>status</th></tr>{"".join(_stat_row(s) for s in stats)}</table>{"".join(trends)}</div></section>')
    offsets = ", ".join(f"{o.topic}[{o.partition}] {o.first_offset}–{o.last_offset}" for o in latest.offsets)
    statuses = [r.status for r in records]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>drift: {html.escape(latest.model_name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1000px}} h2{{font-size:16px;margin:18px 0 6px}}
.row{{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border-bottom:1px solid #eee;padding:2px 8px;text-align:right}} .legend{{font-size:11px}}
section{{border-top:1px solid #ccc}} .meta{{color:#555;font-size:13px}}</style></head><body>
<h1>Drift of {html.escape(latest.model_name)}@{html.escape(latest.model_version)}:
<span style="color:{COLOUR[latest.status]}">{latest.status}</span></h1>
<p class="meta">Latest window: {latest.window_events} events ({latest.window_scored} scored, {latest.window_invalid}
invalid), event time {_when(latest.window_start_ms)} → {_when(latest.window_end_ms)}, computed
{_when(latest.computed_at)} by {html.escape(latest.worker)}.<br>Offsets: {html.escape(offsets) or "–"}<br>
Reference profile sha256 {latest.profile_sha256[:16]}…, model sha256 {latest.model_sha256[:16]}….<br>
{len(records)} records: {statuses.count("ok")} ok, {statuses.count("warn")} warn, {statuses.count("alert")} alert
(oldest left):</p>{_strip(records)}
{"".join(sections)}
<p class="meta">Generated {_when(int(time.time() * 1000))}. Statistics and thresholds: docs/drift.md.</p>
</body></html>
"""


def write_report(records: list[DriftRecord], out: Path) -> Path:
    out.write_text(render_report(records), encoding="utf-8")
    return out
