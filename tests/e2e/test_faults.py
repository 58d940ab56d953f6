"""Fault tests over real brokers and real worker processes, with exact counts, for both engines.

* a broker stalled 30 s (SIGSTOP/SIGCONT of a dedicated embedded broker) in the middle of a paced stream:
  every event is scored afterwards (0 lost), duplicates and recovery time are reported;
* poison pills: an 800 KB input (one ``oversized`` letter that fits), an input whose prediction the producer
  refuses (one ``output_rejected`` letter), a float32 overflow (one ``out_of_range``), a corpus of malformed
  JSON and Avro inputs (one letter each with its reason code); all good events are scored;
* switching engines does not score again what the other engine committed;
* an output topic deleted under a running worker is created again.

Workers are shared between cases: one worker per engine scores every poison pill and the corpus at once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from models.demo import FEATURE_NAMES, sample_events
from schemas.codecs import decode_dead_letter
from streams.cli.produce import bad_avro_payloads, bad_payloads, encode_events, produce
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.publisher import Outbound, Publisher
from streams.kafka.reader import read_all, wait_for
from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from tests.conftest import Flow, free_port

pytestmark = pytest.mark.e2e

ENGINES = ("faust", "batch")


# --- flows and workers ------------------------------------------------------------------------------------


def make_flow(base: Settings, model_dir: Path, log_dir: Path, engine: str, **overrides: object) -> Flow:
    run = uuid.uuid4().hex[:8]
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = base.model_copy(update={
        "app_id": f"faults-{run}",
        "input_topics": {f"features-{run}": "json", f"features-avro-{run}": "avro"},
        "prediction_topic": f"predictions-{run}",
        "dead_letter_topic": f"dead-letter-{run}",
        "model_dir": model_dir,
        "engine": engine,
        "state_dir": log_dir,
        "archive": False,
        "drift_window": 0,
        **overrides,
    })
    ensure_topics(settings)
    return Flow(settings, log_dir)


def predictions(settings: Settings) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_all(settings, settings.prediction_topic)]


def letters(settings: Settings) -> list:
    return [decode_dead_letter(m.value()) for m in read_all(settings, settings.dead_letter_topic)]


def wait_scored(settings: Settings, ids: set[str], timeout: float) -> list[dict]:
    def covered(messages) -> bool:
        return ids <= {orjson.loads(m.value())["event_id"] for m in messages}

    return [orjson.loads(m.value()) for m in wait_for(settings, settings.prediction_topic, covered, timeout)]


# --- the malformed-input corpus ------------------------------------------------------------------------------


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _avro_string(s: str) -> bytes:
    raw = s.encode()
    return _zigzag(len(raw)) + raw


def avro_body(event_id: str, features: list[tuple[str, float]], *, schema_version: int = 1,
              event_time: int | None = None, varint: bytes | None = None) -> bytes:
    """A Confluent-framed feature_event written by hand, so maps can repeat keys and varints can be overlong."""
    body = _avro_string(event_id) + _avro_string("acct-bad")
    body += varint if varint is not None else _zigzag(event_time if event_time is not None else 1_700_000_000_000)
    body += _zigzag(schema_version)
    body += _zigzag(len(features)) + b"".join(_avro_string(k) + struct.pack("<d", v) for k, v in features) + b"\x00"
    body += b"\x00"  # metadata: null
    return b"\x00" + struct.pack(">I", 1) + body


def corpus(tag: str) -> dict[str, list[tuple[str, tuple[bytes, bytes | None]]]]:
    """topic format -> [(expected reason code, (key, value))], one bad input per kind (>= 30 kinds)."""
    names = list(FEATURE_NAMES)
    good = {n: 1.0 for n in names}

    def key(i: int | str) -> bytes:
        return f"bad-{tag}-x{i}".encode()

    def event(i: int, **overrides: object) -> dict:
        base = {"event_id": key(i).decode(), "entity_id": "acct-bad", "event_time": 1_700_000_000_000,
                "schema_version": 1, "features": dict(good)}
        base.update(overrides)
        return base

    def dumps(i: int, **overrides: object) -> bytes:
        return orjson.dumps(event(i, **overrides))

    feats_json = orjson.dumps(good).decode()
    deep = "[" * 20_000 + "]" * 20_000
    json_cases = [(code, payload) for code, payload in bad_payloads(names, tag)]
    json_cases += [
        ("duplicate_key", (key(1), f'{{"event_id":"{key(1).decode()}","event_id":"other","entity_id":"a",'
                                   f'"event_time":1,"schema_version":1,"features":{feats_json}}}'.encode())),
        ("duplicate_key", (key(2), dumps(2)[:-2] + f',"{names[0]}":2.0}}}}'.encode())),
        ("out_of_range", (key(3), dumps(3, features={**good, names[1]: -1e39}))),
        ("not_json", (key(4), dumps(4)[:-1] + b' {"trailing": 1}')),  # trailing bytes after the object
        ("not_json", (key(5), f'{{"event_id":"{key(5).decode()}","metadata":{deep}}}'.encode())),  # deep nesting
        ("wrong_type", (key(6), dumps(6, features={**good, names[2]: "9" * 40_000}))),  # a huge string feature
        ("oversized", (key(7), dumps(7, entity_id="e" * 70_000))),  # a huge string over max_payload_bytes
        ("not_json", (key(8), dumps(8).replace(b"1.0", b"NaN", 1))),
        ("not_json", (key(9), dumps(9).replace(b"1.0", b"1e400", 1))),  # beyond float64
        ("not_json", (key(10), b"[1, 2, 3]")),
        ("not_json", (key(11), dumps(11)[:40])),  # truncated
        ("not_json", (key(12), b"\xff\xfe" + dumps(12))),  # not UTF-8
        ("wrong_type", (key(13), dumps(13, features={**good, names[3]: True}))),
        ("wrong_type", (key(14), dumps(14, features={**good, names[4]: {"nested": 1}}))),
        ("schema_violation", (key(15), dumps(15, event_id=""))),
        ("schema_violation", (key(16), dumps(16, surprise_field=1))),
        ("schema_violation", (key(17), dumps(17, event_time=1).replace(b'"event_time":1', b'"event_time":%d' % 2**63))),
        ("wrong_type", (key(20), dumps(20, event_time=1).replace(b'"event_time":1', b'"event_time":%d' % 2**64))),
        ("unknown_schema_version", (key(18), dumps(18, schema_version=0))),
        ("empty", (key(19), None)),  # a tombstone
    ]
    feats = list(good.items())
    avro_cases = [(code, payload) for code, payload in bad_avro_payloads(names, tag)]
    avro_cases += [
        ("bad_avro", (key("a1"), avro_body(key("a1").decode(), feats, varint=b"\xff" * 11))),  # overlong varint
        ("bad_avro", (key("a2"), avro_body(key("a2").decode(), feats) + b"\x00\x01"))  # trailing bytes
        ,
        ("non_finite", (key("a3"), avro_body(key("a3").decode(), [*feats[:-1], (names[-1], float("nan"))]))),
        ("non_finite", (key("a4"), avro_body(key("a4").decode(), [*feats[:-1], (names[-1], float("inf"))]))),
        ("out_of_range", (key("a5"), avro_body(key("a5").decode(), [*feats[:-1], (names[-1], 1e39)]))),
        ("duplicate_key", (key("a6"), avro_body(key("a6").decode(), [*feats, (names[0], 2.0)]))),
        ("bad_avro", (key("a7"), b"\x01" + avro_body(key("a7").decode(), feats)[1:])),  # wrong magic byte
        ("bad_avro", (key("a8"), b"\x00\x00\x01")),  # shorter than the header
        ("unknown_schema_version", (key("a9"), avro_body(key("a9").decode(), feats, schema_version=99))),
        ("missing_feature", (key("a10"), avro_body(key("a10").decode(), feats[1:]))),
        ("extra_feature", (key("a11"), avro_body(key("a11").decode(), [*feats, ("surprise", 1.0)]))),
        ("empty", (key("a12"), b"")),
    ]
    return {"json": json_cases, "avro": avro_cases}


# --- poison pills and the corpus: one worker per engine scores them all -----------------------------------


@dataclass
class PoisonRun:
    flow: Flow
    good_ids: set[str]
    special: dict[str, bytes]  # case -> key of its input
    corpus: dict[str, list[tuple[str, tuple[bytes, bytes | None]]]]
    predictions: list[dict]
    letters: list
    worker_alive: bool
    after_ids: set[str]


@pytest.fixture(scope="module", params=ENGINES)
def poison(request: pytest.FixtureRequest, base_settings: Settings, model_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoisonRun]:
    engine = request.param
    flow = make_flow(base_settings, model_dir, tmp_path_factory.mktemp(f"poison-{engine}"), engine)
    s, tag = flow.settings, uuid.uuid4().hex[:6]
    before, after = sample_events(31, 300), sample_events(32, 200)
    good_json = {n: 1.0 for n in FEATURE_NAMES}
    pill = orjson.dumps({"event_id": f"pill-{tag}", "entity_id": "acct-pill", "event_time": 1, "schema_version": 1,
                         "features": good_json, "metadata": {"blob": "x" * 800_000}})
    assert 800_000 < len(pill) < 1_000_000  # over max_payload_bytes, under the broker's message.max.bytes
    overflow = orjson.dumps({"event_id": f"overflow-{tag}", "entity_id": "acct-o", "event_time": 1,
                             "schema_version": 1, "features": {**good_json, FEATURE_NAMES[0]: 1e39}})
    # A valid event whose key is so long that its prediction (same key + ~700 bytes) is over the producer's
    # message.max.bytes, while the input itself is not: the producer refuses the output for good.
    valid = orjson.dumps({"event_id": f"bigkey-{tag}", "entity_id": "acct-k", "event_time": 1,
                          "schema_version": 1, "features": good_json})
    big_key = b"k" * (999_600 - len(valid))
    special = {"oversized": f"pill-{tag}".encode(), "out_of_range": f"overflow-{tag}".encode(),
               "output_rejected": big_key}
    cases = corpus(tag)
    produce(s, flow.json_topic, encode_events(before))
    produce(s, flow.json_topic, [(special["oversized"], pill), (special["out_of_range"], overflow),
                                 (big_key, valid)])
    produce(s, flow.json_topic, [payload for _, payload in cases["json"]])
    produce(s, flow.avro_topic, [payload for _, payload in cases["avro"]])
    proc = flow.start_worker()
    try:
        ids = {e["event_id"] for e in before}
        wait_scored(s, ids, timeout=120)
        produce(s, flow.json_topic, encode_events(after))  # still scoring after every pill
        after_ids = {e["event_id"] for e in after}
        preds = wait_scored(s, ids | after_ids, timeout=120)
        expected_letters = len(cases["json"]) + len(cases["avro"]) + 3
        deadline = time.monotonic() + 60
        dls = letters(s)
        while len(dls) < expected_letters and time.monotonic() < deadline:
            time.sleep(0.5)
            dls = letters(s)
        time.sleep(2)  # anything extra would land by now
        run = PoisonRun(flow, ids | after_ids, special, cases, predictions(s), letters(s), proc.poll() is None,
                        after_ids)
        del preds
        yield run
    finally:
        flow.stop_all()


def _letters_for(run: PoisonRun, key: bytes) -> list:
    return [dl for dl in run.letters if dl.original_key == key[:16384]]


def test_poison_pill_800kb_is_one_oversized_letter_that_fits(poison: PoisonRun):
    [letter] = _letters_for(poison, poison.special["oversized"])
    assert letter.reason_code == "oversized" and letter.original_truncated
    assert letter.original_size > 800_000 and len(letter.original_value) == 16384
    scored = collections.Counter(p["event_id"] for p in poison.predictions)
    assert set(scored) == poison.good_ids, poison.flow.log()  # every good event scored, before and after
    assert poison.worker_alive, poison.flow.log()
    print(f"\n[{poison.flow.settings.engine}] poison pill: 1 oversized letter; {len(poison.good_ids)} good events "
          f"scored; {sum(scored.values()) - len(scored)} duplicates")


def test_refused_output_is_one_output_rejected_letter(poison: PoisonRun):
    key = poison.special["output_rejected"]
    [letter] = _letters_for(poison, key)
    assert letter.reason_code == "output_rejected" and "MSG_SIZE_TOO_LARGE" in letter.reason, letter.reason
    assert letter.original_truncated and letter.original_key == key[:16384]
    assert not [p for p in poison.predictions if p["event_id"].startswith("bigkey-")]
    assert poison.after_ids <= {p["event_id"] for p in poison.predictions}  # the lane kept scoring after it


def test_float32_overflow_is_one_out_of_range_letter(poison: PoisonRun):
    [letter] = _letters_for(poison, poison.special["out_of_range"])
    assert letter.reason_code == "out_of_range" and "float32" in letter.reason
    assert not [p for p in poison.predictions if p["event_id"].startswith("overflow-")]


def test_malformed_corpus_each_one_letter_with_its_reason(poison: PoisonRun):
    cases = [c for fmt_cases in poison.corpus.values() for c in fmt_cases]
    assert len(cases) >= 30
    by_key = collections.defaultdict(list)
    for dl in poison.letters:
        by_key[dl.original_key].append(dl.reason_code)
    got = {k: by_key.get(k) for _, (k, _v) in cases}
    wrong = {k: (code, got[k]) for code, (k, _v) in cases if got[k] != [code]}
    assert not wrong, wrong
    # Exactly: the corpus, the three pills, nothing else.
    assert len(poison.letters) == len(cases) + 3
    bad_ids = {k.decode() for _, (k, _v) in cases}
    assert not [p for p in poison.predictions if p["event_id"] in bad_ids]
    print(f"\n[{poison.flow.settings.engine}] corpus: {len(cases)} malformed inputs "
          f"({len(poison.corpus['json'])} JSON, {len(poison.corpus['avro'])} Avro) -> {len(cases)} letters, "
          f"{len(poison.good_ids)} good events scored")


# --- a stalled broker ---------------------------------------------------------------------------------------


STALL_S = float(os.environ.get("STREAMSCORE_TEST_STALL_S", "30"))
STALL_EVENTS = 5000
STALL_RATE = 125  # events/s: a 40 s stream with the stall in its middle


def paced_produce(settings: Settings, topic: str, payloads: list, rate: float) -> None:
    """Like ``produce(..., rate=...)``, but waits for every delivery however long the broker is away (``produce``
    gives up at close after 30 s)."""
    publisher = Publisher(settings.kafka, **{"linger.ms": 5})
    step, deliveries, started = max(1, int(rate / 20)), [], time.monotonic()
    for i in range(0, len(payloads), step):
        deliveries.append(publisher.send_batch([Outbound(topic, k, v) for k, v in payloads[i:i + step]]))
        ahead = (i + step) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    for delivery in deliveries:
        delivery.wait(600)
    publisher.close()


@dataclass
class StallResult:
    flow: Flow
    ids: set[str]
    predictions: list[dict]
    resumed_at_ms: int
    alive: bool


@pytest.fixture(scope="module")
def stalled(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Both engines (two flows) on a dedicated broker that is stopped for STALL_S mid-stream, then resumed."""
    state = tmp_path_factory.mktemp("stall-broker")
    base = Settings(embedded_port=free_port(), state_dir=state, session_timeout_ms=3000, heartbeat_interval_ms=300)
    broker = EmbeddedBroker(base)
    status = broker.up()
    assert status.pid is not None
    flows = {e: make_flow(base, model_dir, state / e, e) for e in ENGINES}
    probe_topic = f"probe-{uuid.uuid4().hex[:6]}"
    ensure_topics(base, [probe_topic])
    try:
        for flow in flows.values():
            flow.start_worker()
        streams = {e: sample_events(40 + i, STALL_EVENTS) for i, e in enumerate(ENGINES)}
        threads = [threading.Thread(target=paced_produce, args=(flows[e].settings, flows[e].json_topic,
                                                                list(encode_events(streams[e])), STALL_RATE))
                   for e in ENGINES]
        for t in threads:
            t.start()
        time.sleep(STALL_EVENTS / STALL_RATE / 4)
        os.kill(status.pid, signal.SIGSTOP)
        # Our own retry, beside librdkafka's: messages that time out inside librdkafka are produced again.
        probe = Publisher(base.kafka, **{"message.timeout.ms": 3000})
        probe_delivery = probe.send_batch([Outbound(probe_topic, f"p{i}".encode(), b"x") for i in range(10)])
        try:
            time.sleep(STALL_S)
        finally:
            os.kill(status.pid, signal.SIGCONT)
        resumed_at_ms = time.time_ns() // 1_000_000
        for t in threads:
            t.join(300)
        results = {}
        for e in ENGINES:
            ids = {ev["event_id"] for ev in streams[e]}
            preds = wait_scored(flows[e].settings, ids, timeout=240)
            results[e] = StallResult(flows[e], ids, preds, resumed_at_ms, flows[e].workers[0].poll() is None)
        probe_delivery.done.wait(60)
        probe.close(10)
        results["probe"] = (probe_delivery, [m.key() for m in read_all(base, probe_topic)])
        yield results
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGCONT)
        for flow in flows.values():
            flow.stop_all()
        broker.down()


@pytest.mark.parametrize("engine", ENGINES)
def test_broker_stall_loses_nothing_and_scoring_resumes(stalled: dict, engine: str):
    r: StallResult = stalled[engine]
    scored = collections.Counter(p["event_id"] for p in r.predictions)
    missing = r.ids - set(scored)
    assert not missing, f"{len(missing)} events never scored:\n{r.flow.log()}"
    assert set(scored) == r.ids  # nothing foreign either
    assert r.alive, r.flow.log()
    after = [p["scored_at"] for p in r.predictions if p["scored_at"] >= r.resumed_at_ms]
    assert after, "nothing scored after the broker resumed"
    recovery_s = (min(after) - r.resumed_at_ms) / 1000
    duplicates = sum(scored.values()) - len(scored)
    print(f"\n[{engine}] broker stalled {STALL_S:.0f} s: {len(r.ids)} events, 0 lost, {duplicates} duplicates, "
          f"first prediction {recovery_s:.1f} s after SIGCONT, all scored "
          f"{(max(p['scored_at'] for p in r.predictions) - r.resumed_at_ms) / 1000:.1f} s after")
    assert recovery_s < 120


def test_publisher_produces_timed_out_messages_again(stalled: dict):
    delivery, keys = stalled["probe"]
    assert delivery.done.is_set() and not delivery.rejected
    assert delivery.retries >= 10  # each of the 10 timed out at least once (3 s timeout, 30 s stall)
    assert {f"p{i}".encode() for i in range(10)} <= set(keys)
    print(f"\npublisher: 10 messages, {delivery.retries} re-produced, {len(keys) - 10} duplicates in the topic")


def test_output_topic_lost_in_a_broker_restart_is_created_again(model_dir: Path, tmp_path: Path):
    """The embedded broker keeps topics in memory: after a restart the worker creates its outputs again."""
    base = Settings(embedded_port=free_port(), state_dir=tmp_path, session_timeout_ms=3000, heartbeat_interval_ms=300)
    broker = EmbeddedBroker(base)
    broker.up()
    flow = make_flow(base, model_dir, tmp_path / "restart", "batch")
    s = flow.settings
    try:
        flow.start_worker()
        first, second = sample_events(51, 50), sample_events(52, 50)
        produce(s, flow.json_topic, encode_events(first))
        wait_scored(s, {e["event_id"] for e in first}, timeout=60)
        broker.down()
        broker.up()
        ensure_topics(s, list(s.input_topics))  # the inputs come back with their producers; outputs are ours
        produce(s, flow.json_topic, encode_events(second))
        ids = {e["event_id"] for e in second}
        deadline, preds = time.monotonic() + 120, []
        while time.monotonic() < deadline and not ids <= {p["event_id"] for p in preds}:
            try:
                preds = wait_scored(s, ids, timeout=5)
            except KeyError:  # not created again yet
                time.sleep(1)
        assert ids <= {p["event_id"] for p in preds}, flow.log()
        partitions = AdminClient(base.kafka.kafka_client_config()).list_topics(timeout=5).topics[s.prediction_topic]
        assert len(partitions.partitions) == s.partitions  # with the flow's partition count...
        assert "were missing" in flow.log()  # ...by the publisher (Tansu would auto-create it; Kafka may not)
        assert flow.workers[0].poll() is None
    finally:
        flow.stop_all()
        broker.down()


# --- switching engines ------------------------------------------------------------------------------------------


def test_switching_engines_does_not_score_committed_events_again(base_settings: Settings, model_dir: Path,
                                                                 tmp_path: Path):
    flow = make_flow(base_settings, model_dir, tmp_path, "faust")
    s = flow.settings
    rounds = [("faust", sample_events(61, 300)), ("batch", sample_events(62, 200)), ("faust", sample_events(63, 100))]
    seen: set[str] = set()
    from streams.cli.demo import stop_worker

    for engine, events in rounds:
        produce(s, flow.json_topic, encode_events(events))
        proc = flow.start_worker(engine=engine)
        seen |= {e["event_id"] for e in events}
        wait_scored(s, seen, timeout=120)
        time.sleep(2 * s.commit_interval_s + 1)  # the last commit
        assert stop_worker(proc) == 0, flow.log()
    scored = collections.Counter(p["event_id"] for p in predictions(s))
    assert set(scored) == seen
    duplicates = sum(scored.values()) - len(scored)
    print(f"\nengine switch faust -> batch -> faust: {len(seen)} events, {duplicates} duplicates")
    assert duplicates == 0, {k: v for k, v in scored.items() if v > 1}
