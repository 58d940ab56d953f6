"""A broker outage with workers as deployed (drift lane and archiver on), one per engine, on a broker of this module:
what they log, what /healthz says, and that nothing is lost; and a worker started before its broker exists.

One broker for the module's three workers. The unreachable-address worker starts first, against the port the broker
will take (``kafka://``, so nothing starts a broker for it); the broker then appears, and that worker scores. Then the
broker is stopped for ``OUTAGE_S`` with all three running and started again (Tansu is memory-only: the topics come
back empty and the workers create their outputs again, as in test_faults).

Before the summarising (streams.logs.Summariser), a 50 s outage logged 3,798 lines (0.75 MB, batch engine) and
4,203 (0.82 MB, faust) per worker, 83 % of them aiokafka's reconnect errors; after it, 20-21 lines.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from models.demo import sample_events
from streams.cli.demo import start_worker, stop_worker, wait_ready
from streams.cli.produce import encode_events, produce
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.reader import wait_for
from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

# The outage: 45 s. Long enough that every client of the worker has gone through its retries many times
# (aiokafka reconnects every 50 ms) and the lag monitor has reported the broker unreachable (after 15 s).
OUTAGE_S = 45.0
INTERVAL_S = 20.0  # log_repeat_interval_s of these workers: a 45 s outage spans three intervals of the summariser
RETRY_WAIT_S = 12.0  # the unreachable-address worker waits this long after its first retry line for the broker
WAIT_LOG_S = 10.0  # ... with this log_repeat_interval_s: its wait tries every 5 s and logs every other try
EVENTS = 200


@dataclass
class Worker:
    name: str
    settings: Settings
    proc: object
    log: Path
    outage_bytes: bytes = b""
    health_during: dict = field(default_factory=dict)
    health_after: dict = field(default_factory=dict)
    before: set[str] = field(default_factory=set)
    after: set[str] = field(default_factory=set)
    scored_before: set[str] = field(default_factory=set)
    scored_after: set[str] = field(default_factory=set)
    alive: bool = False

    @property
    def topic(self) -> str:
        return next(iter(self.settings.input_topics))

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Run:
    workers: dict[str, Worker]
    waiting_log: str  # the unreachable-address worker's log before the broker appeared
    outage_s: float


def flow_settings(base: Settings, tmp: Path, name: str, **overrides: object) -> Settings:
    run = uuid.uuid4().hex[:6]
    (tmp / name).mkdir()
    return base.model_copy(update={
        "app_id": f"outage-{run}", "input_topics": {f"features-{run}": "json", f"features-avro-{run}": "avro"},
        "prediction_topic": f"predictions-{run}", "dead_letter_topic": f"dead-letter-{run}",
        "state_dir": tmp / name, "web_port": free_port(), "log_format": "json", "log_repeat_interval_s": INTERVAL_S,
        **overrides,  # drift lane and archiver as deployed (Settings defaults)
    })


def scored(settings: Settings, ids: set[str], timeout: float) -> set[str]:
    """The ids of ``ids`` on the prediction topic, waiting up to ``timeout`` for all (the topic may be missing at first,
    until the worker creates it again)."""
    deadline, seen = time.monotonic() + timeout, set()
    while time.monotonic() < deadline and not ids <= seen:
        try:
            messages = wait_for(settings, settings.prediction_topic,
                                lambda ms: ids <= {orjson.loads(m.value())["event_id"] for m in ms}, timeout=5)
            seen = {orjson.loads(m.value())["event_id"] for m in messages}
        except (KeyError, TimeoutError):
            time.sleep(1)
    return seen & ids


def healthz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503: failing, with the same body
        return orjson.loads(exc.read())


def produce_and_score(worker: Worker, seed: int, timeout: float) -> tuple[set[str], set[str]]:
    events = sample_events(seed, EVENTS)
    ensure_topics(worker.settings, list(worker.settings.input_topics))  # after a restart: the producers' topics
    produce(worker.settings, worker.topic, encode_events(events))
    ids = {e["event_id"] for e in events}
    return ids, scored(worker.settings, ids, timeout)


@pytest.fixture(scope="module")
def run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("outage")
    port = free_port()
    base = Settings(embedded_port=port, state_dir=tmp / "broker", session_timeout_ms=3000, heartbeat_interval_ms=300,
                    model_dir=model_dir)
    broker = EmbeddedBroker(base)
    workers: dict[str, Worker] = {}

    def start(name: str, settings: Settings) -> None:
        log = tmp / f"{name}.log"
        workers[name] = Worker(name, settings, start_worker(settings, log, loglevel="info"), log)

    try:
        # kafka:// to where the broker will be: the worker must wait for it, not start one, not crash
        start("unreachable", flow_settings(base, tmp, "unreachable", broker=f"kafka://127.0.0.1:{port}",
                                           engine="batch", idempotent_producer=False, fetch_max_wait_ms=10,
                                           log_repeat_interval_s=WAIT_LOG_S))
        deadline = time.monotonic() + 90  # Python and the model load first: seconds on a busy machine
        while "not reachable" not in workers["unreachable"].text() and time.monotonic() < deadline:
            assert workers["unreachable"].proc.poll() is None, workers["unreachable"].text()  # type: ignore[attr-defined]
            time.sleep(0.5)
        time.sleep(RETRY_WAIT_S)
        waiting_log = workers["unreachable"].text()
        broker.up()
        start("batch", flow_settings(base, tmp, "batch", engine="batch"))
        start("faust", flow_settings(base, tmp, "faust", engine="faust"))
        for w in workers.values():
            assert wait_ready(w.settings.web_port, timeout=120, proc=w.proc), w.text()[-3000:]  # type: ignore[arg-type]
        for seed, w in enumerate(workers.values()):
            w.before, w.scored_before = produce_and_score(w, 300 + seed, timeout=60)
        time.sleep(2)
        marks = {name: w.log.stat().st_size for name, w in workers.items()}
        started = time.monotonic()
        broker.down()
        time.sleep(OUTAGE_S - 15)
        for w in workers.values():  # the lag monitor calls the broker unreachable after 15 s without an answer
            w.health_during = healthz(w.settings.web_port)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        for name, w in workers.items():
            with w.log.open("rb") as f:
                f.seek(marks[name])
                w.outage_bytes = f.read()
        broker.up()
        outage_s = time.monotonic() - started
        results = {}
        threads = [threading.Thread(target=lambda w=w, seed=seed: results.__setitem__(
            w.name, produce_and_score(w, 400 + seed, timeout=120))) for seed, w in enumerate(workers.values())]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        for w in workers.values():
            w.after, w.scored_after = results.get(w.name, (set(), set()))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the broker part follows the lag monitor (next answer: < 5 s)
                w.health_after = healthz(w.settings.web_port)
                if w.health_after["parts"]["broker"]["reachable"] and w.health_after["status"] == "ok":
                    break
                time.sleep(1)
            w.alive = w.proc.poll() is None  # type: ignore[attr-defined]
        yield Run(workers, waiting_log, outage_s)
    finally:
        for w in workers.values():
            with contextlib.suppress(Exception):
                if w.proc.poll() is None:  # type: ignore[attr-defined]
                    stop_worker(w.proc)  # type: ignore[arg-type]
        broker.down()


def lines_of(raw: bytes) -> list[dict]:
    """JSON log lines; anything else (a native librdkafka line on stderr, a stray print) as its own kind."""
    out = []
    for line in raw.decode(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"logger": "not-json", "level": "?", "message": line})
    return out


def kind_of(line: dict) -> tuple[str, str, str]:
    """Lines alike, as far as the text tells: the logger, the level and the message without its numbers and counts."""
    message = re.sub(r" \(and \d+ more like it in \d+ s\)$", "", line["message"])
    if line["logger"] == "librdkafka":
        message = message.split(" ", 1)[0]  # the facility: FAIL, REQTMOUT, ...
    return line["logger"], line["level"], re.sub(r"\d+", "N", message)


@pytest.mark.parametrize("name", ["batch", "faust", "unreachable"])
def test_an_outage_logs_one_line_per_kind_and_interval(run: Run, name: str):
    w = run.workers[name]
    lines = lines_of(w.outage_bytes)
    kinds = collections.Counter(kind_of(line) for line in lines)
    # Each kind at most once per interval: a first line, then one at most every INTERVAL_S, in each of the worker and
    # its archiver child (restarted once in an outage: a new process, a new summariser) -> per kind at most
    # 2 processes x ceil(outage / interval) + 1 for the child's restart.
    per_kind = 2 * math.ceil(run.outage_s / w.settings.log_repeat_interval_s) + 1
    too_many = {k: n for k, n in kinds.items() if n > per_kind}
    sources = collections.Counter(line["logger"].split(".")[0] for line in lines)
    print(f"\n[{name}] {run.outage_s:.0f} s outage: {len(lines)} lines, {len(w.outage_bytes):,} bytes, "
          f"{len(kinds)} kinds; by source {dict(sources.most_common())}")
    assert not too_many, too_many
    assert "not-json" not in sources, [line["message"] for line in lines if line["logger"] == "not-json"][:5]
    assert len(lines) <= 100, "\n".join(line["message"][:160] for line in lines)  # 3,798-4,203 before
    outage_lines = [line["message"] for line in lines if line["logger"] == "streams.worker.outage"]
    assert len(outage_lines) == 1 and "not answering since" in outage_lines[0], outage_lines


@pytest.mark.parametrize("name", ["batch", "faust", "unreachable"])
def test_after_the_outage_one_line_says_the_broker_is_back_and_what_was_left_out(run: Run, name: str):
    back = [line["message"] for line in lines_of(run.workers[name].log.read_bytes())
            if line["logger"] == "streams.worker.outage" and "answers again" in line["message"]]
    assert len(back) == 1, back
    left_out = re.search(r"; ([\d,]+) lines alike left out meanwhile \((.+)\)$", back[0])
    assert left_out, back[0]
    assert int(left_out.group(1).replace(",", "")) > 0 and "aiokafka" in left_out.group(2)
    print(f"\n[{name}] {back[0]}")


@pytest.mark.parametrize("name", ["batch", "faust", "unreachable"])
def test_nothing_is_lost_and_the_worker_lives_through_the_outage(run: Run, name: str):
    w = run.workers[name]
    assert w.scored_before == w.before and len(w.before) == EVENTS
    assert w.scored_after == w.after and len(w.after) == EVENTS, f"{len(w.after - w.scored_after)} lost:\n" \
                                                                 f"{w.text()[-3000:]}"
    assert w.alive, w.text()[-3000:]


@pytest.mark.parametrize("name", ["batch", "faust", "unreachable"])
def test_healthz_says_the_broker_is_unreachable_during_the_outage_and_ok_after(run: Run, name: str):
    w = run.workers[name]
    during = w.health_during["parts"]["broker"]
    assert during["reachable"] is False and during["unreachable_for_s"] >= OUTAGE_S - 15 - 5, during
    assert during["healthy"]  # an outage is not the worker's fault: no restart by the orchestrator
    after = w.health_after
    assert after["parts"]["broker"]["reachable"] is True and after["status"] == "ok", after


def test_a_worker_started_against_an_unreachable_address_retries_then_scores(run: Run):
    w = run.workers["unreachable"]
    assert "Traceback" not in run.waiting_log, run.waiting_log
    ours = [line["message"] for line in lines_of(w.log.read_bytes()) if line["logger"] == "streams.worker.app"]
    answered = [m for m in ours if "answered after" in m]
    assert len(answered) == 1, ours
    waited_s, failed = map(int, re.search(r"answered after (\d+) s \((\d+) failed attempt", answered[0]).groups())
    retries = ours[:ours.index(answered[0])]
    address = w.settings.bootstrap_servers
    hint = f"is it running? STREAMSCORE_BROKER=kafka://{address} names it"
    assert retries and all(f"broker {address} not reachable" in r and r.endswith(hint) for r in retries), retries
    # a try every 5 s, a line every WAIT_LOG_S (the first at once): 2 lines and 3+ tries in the 12+ s wait
    assert 2 <= len(retries) <= math.ceil(waited_s / WAIT_LOG_S) + 1, retries
    assert failed > len(retries) and failed >= waited_s // 5, answered
    assert w.scored_before == w.before and len(w.before) == EVENTS  # it scores once the broker appears
