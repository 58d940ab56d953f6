"""Repeated log lines are summarised (streams.logs.Summariser), the outage says when it began and ended, and the
start-up wait for a broker logs one line per interval."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.kafka import clients
from streams.logs import SUMMARY, Summariser, json_formatter, summarise_root
from streams.settings import Settings
from streams.worker import app as worker_app
from streams.worker.outage import OutageWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def captured(clock: Clock) -> Iterator[tuple[Summariser, io.StringIO, logging.Logger]]:
    """A logger whose handler carries a fresh Summariser (60 s), writing message lines to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    summary = Summariser(60.0, clock=clock)
    handler.addFilter(summary)
    logger = logging.getLogger("aiokafka.test-summary")
    logger.addHandler(handler)
    logger.propagate = False
    yield summary, stream, logger
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_one_line_per_kind_and_interval_with_the_count_of_the_rest(captured, clock: Clock):
    summary, stream, log = captured
    for second in range(150):  # 2.5 intervals, two kinds, each logged 10 times a second
        clock.now = 1000.0 + second
        for node in range(10):
            log.error("Unable connect to node with id %s", node)
            log.error("Unable to update metadata from %s", [node])
    out = lines(stream)
    assert out == [
        "aiokafka.test-summary Unable connect to node with id 0",
        "aiokafka.test-summary Unable to update metadata from [0]",
        "aiokafka.test-summary Unable connect to node with id 0 (and 599 more like it in 60 s)",
        "aiokafka.test-summary Unable to update metadata from [0] (and 599 more like it in 60 s)",
        "aiokafka.test-summary Unable connect to node with id 0 (and 599 more like it in 60 s)",
        "aiokafka.test-summary Unable to update metadata from [0] (and 599 more like it in 60 s)",
    ]
    assert summary.take_suppressed() == {"aiokafka": 2 * (1500 - 3)}
    assert summary.take_suppressed() == {}  # taken: counted once


def test_tracebacks_and_our_progress_lines_always_get_through(captured, clock: Clock):
    summary, stream, log = captured
    ours = logging.getLogger("streams.test-summary")
    for handler in log.handlers:
        ours.addHandler(handler)
    ours.propagate = False
    ours.setLevel(logging.INFO)
    try:
        for _ in range(3):
            ours.info("scored %d events", 256)
            try:
                raise RuntimeError("injected scoring agent failure")
            except RuntimeError:
                log.exception("Agent crashed")
            ours.warning("output to %s not delivered", "predictions")
    finally:
        for handler in log.handlers:
            ours.removeHandler(handler)
        ours.propagate = True
        ours.setLevel(logging.NOTSET)
    text = stream.getvalue()
    assert text.count("scored 256 events") == 3
    assert text.count("RuntimeError: injected scoring agent failure") == 3  # each with its traceback
    assert text.count("not delivered") == 1  # our own warnings are summarised like anyone's
    assert summary.take_suppressed() == {"streamscore": 2}


def test_librdkafka_lines_are_alike_by_facility(captured, clock: Clock):
    summary, stream, _ = captured
    rd = logging.getLogger("librdkafka")
    handler = logging.getLogger("aiokafka.test-summary").handlers[0]
    rd.addHandler(handler)
    kept, rd.filters = rd.filters, []  # the CLI's own filter (clients.quiet, set by CLI tests in this process)
    try:
        for client in range(5):  # what confluent-kafka's logger callback calls
            rd.log(logging.ERROR, "%s [%s] %s", "FAIL", f"rdkafka#consumer-{client}", "Connect to ... refused")
            rd.log(logging.WARNING, "%s [%s] %s", "SESSTMOUT", f"rdkafka#consumer-{client}", "session timed out")
    finally:
        rd.removeHandler(handler)
        rd.filters = kept
    assert [line.split(" [")[0] for line in lines(stream)] == ["librdkafka FAIL", "librdkafka SESSTMOUT"]
    assert summary.take_suppressed() == {"librdkafka": 8}


def test_a_record_on_a_logger_and_a_handler_with_the_same_summariser_is_counted_once(clock: Clock):
    summary = Summariser(60.0, clock=clock)
    record = logging.LogRecord("librdkafka", logging.ERROR, __file__, 1, "%s [%s] %s", ("FAIL", "c", "x"), None)
    assert summary.filter(record) and summary.filter(record)  # the logger's decision, then the handler's: same
    again = logging.LogRecord("librdkafka", logging.ERROR, __file__, 1, "%s [%s] %s", ("FAIL", "c", "x"), None)
    assert not summary.filter(again) and not summary.filter(again)
    assert summary.take_suppressed() == {"librdkafka": 1}


def test_consume_errors_are_alike_by_place_and_code(clock: Clock):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    summary = Summariser(60.0, clock=clock)
    handler.addFilter(summary)
    logger = logging.getLogger("streams.kafka.clients")
    logger.addHandler(handler)
    try:
        for _ in range(4):
            clients._error_log("drift lane", KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))
            clients._error_log("drift lane", KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers down"))
            clients._error_log("archive", KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))
    finally:
        logger.removeHandler(handler)
    records = [json.loads(line) for line in lines(stream)]
    assert [r["message"].split(": KafkaError")[0] for r in records] == ["drift lane", "drift lane", "archive"]
    assert all("summary_kind" not in r for r in records)  # the summariser's key stays out of JSON lines
    assert summary.take_suppressed() == {"streamscore": 9}


def test_outage_lines_report_what_was_left_out_by_source(clock: Clock):
    summary = Summariser(60.0, clock=clock)
    reachable = [True]
    watch = OutageWatch(lambda: reachable[0], "127.0.0.1:9092", summary=summary, clock=clock,
                        answer_age_s=lambda: 15.0)
    assert watch.check() is None
    reachable[0] = False
    assert watch.check().startswith("broker 127.0.0.1:9092 not answering since 15 s: the worker keeps retrying")
    assert watch.check() is None  # one line per outage, not per check
    for name, n in (("aiokafka.conn", 30), ("librdkafka", 4), ("streams.worker.lag", 2)):
        for _ in range(n):
            summary.filter(logging.LogRecord(name, logging.ERROR, __file__, 1, "down %s", ("x",), None))
    clock.now += 30
    assert watch.health() == {"healthy": True, "reachable": False, "address": "127.0.0.1:9092",
                              "unreachable_for_s": 45.0}
    reachable[0] = True
    assert watch.check() == ("broker 127.0.0.1:9092 answers again after 45 s; 33 lines alike left out meanwhile "
                             "(aiokafka 29, librdkafka 3, streamscore 1)")
    assert watch.health() == {"healthy": True, "reachable": True, "address": "127.0.0.1:9092"}


def test_no_outage_before_the_broker_first_answered(clock: Clock):
    watch = OutageWatch(lambda: False, "127.0.0.1:9092", summary=Summariser(clock=clock), clock=clock)
    assert watch.check() is None  # starting: the start-up wait speaks for this
    assert watch.health()["reachable"] is False


def test_summarise_root_puts_the_process_summariser_on_every_root_handler_once():
    handler = logging.NullHandler()
    logging.root.addHandler(handler)
    try:
        summarise_root()
        summarise_root()
        assert handler.filters.count(SUMMARY) == 1
    finally:
        logging.root.removeHandler(handler)


def test_start_up_wait_tries_every_retry_s_and_logs_once_per_interval(monkeypatch, caplog):
    """Against a refused address: 13 tries in 6.5 s, a line at 0, 2, 4 and 6 s, then one when it answers."""
    now = [0.0]
    attempts = []

    def ensure_topics(settings: Settings, timeout: float) -> list[str]:
        attempts.append(timeout)
        if len(attempts) <= 13:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport "
                                            "failure"))
        return []

    monkeypatch.setattr(worker_app, "ensure_topics", ensure_topics)
    monkeypatch.setattr(worker_app.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(worker_app.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    settings = Settings(broker="kafka://127.0.0.1:1", log_repeat_interval_s=2.0)
    with caplog.at_level(logging.WARNING, logger="streams.worker.app"):
        worker_app._wait_for_broker(settings, retry_s=0.5)
    messages = [r.getMessage() for r in caplog.records]
    assert len(attempts) == 14 and set(attempts) == {0.5}
    assert len(messages) == 5, messages
    assert messages[0] == ("broker 127.0.0.1:1 not reachable (Failed to get metadata: Local: Broker transport failure);"
                           " trying every 0.5 s (1 attempt(s), 0 s so far); is it running? STREAMSCORE_BROKER="
                           "kafka://127.0.0.1:1 names it")
    assert "(5 attempt(s), 2 s so far" in messages[1] and "(13 attempt(s), 6 s so far" in messages[3]
    assert messages[4] == "broker 127.0.0.1:1 answered after 6 s (13 failed attempt(s)); starting"
