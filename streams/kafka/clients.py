"""Every confluent-kafka client of the project comes from here, and every consume loop reads ``records``.

Defaults, security and the embedded-broker tweaks are set once (``Settings.kafka_client_config``), so a
lane cannot forget SASL or use another fetch wait by accident. ``records`` is ``consume`` without the
noise: partition EOFs are dropped (or counted, for readers that stop at the end) and other errors are
logged once per kind and minute instead of once per poll (a worker logged 7,195 lines in 45 s of broker
outage when every poll logged).

>>> from streams.settings import Settings
>>> conf = consumer_config(Settings().kafka, group_id="g", background=True)
>>> conf["group.id"], conf["enable.auto.commit"], conf["fetch.wait.max.ms"]
('g', False, 250)
>>> standalone_consumer_config(Settings().kafka, "reader")["enable.partition.eof"]
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from streams.settings import KafkaSettings

__all__ = ["admin", "admin_at", "consumer", "consumer_config", "producer", "quiet", "records", "standalone_consumer",
           "standalone_consumer_config"]

log = logging.getLogger(__name__)

Config = dict[str, str | int | bool | float]


class _OncePerFacility(logging.Filter):
    """Lets through one librdkafka line per facility (FAIL, REQTMOUT, ...) and ``interval_s``; counts the rest.

    librdkafka logs every failed connect of every client: ~200 lines for one `tail` against a stopped broker.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        facility = str(record.args[0]) if isinstance(record.args, tuple) and record.args else record.msg
        now = time.monotonic()
        last, repeats = self._last.get(facility, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._last[facility] = (last, repeats + 1)
            return False
        self._last[facility] = (now, 0)
        if repeats:
            record.msg = f"{record.msg} (and {repeats} more like it)"
        return True


_rdkafka_log: logging.Logger | None = None


def quiet(interval_s: float = 60.0) -> None:
    """From now on, every client of this process sends librdkafka's log to the ``librdkafka`` logger, one line per
    facility and ``interval_s`` (the command line calls this; a worker keeps librdkafka's own logging)."""
    global _rdkafka_log
    if _rdkafka_log is None:
        _rdkafka_log = logging.getLogger("librdkafka")
        _rdkafka_log.addFilter(_OncePerFacility(interval_s))


def _base(kafka: KafkaSettings) -> Config:
    conf: Config = dict(kafka.kafka_client_config())
    if _rdkafka_log is not None:
        conf["logger"] = _rdkafka_log  # type: ignore[assignment]
    return conf


def consumer_config(kafka: KafkaSettings, group_id: str, *, background: bool = False, **overrides: object) -> Config:
    """A group member that commits by hand; ``background`` lanes (drift, archive, feedback) fetch with longer
    waits, since latency is not their concern (``Settings.background_fetch_wait_ms``)."""
    conf: Config = kafka.group_consumer_config(group_id)
    if _rdkafka_log is not None:
        conf["logger"] = _rdkafka_log  # type: ignore[assignment]
    if background:
        conf["fetch.wait.max.ms"] = kafka.background_fetch_wait_ms
    conf.update(overrides)  # type: ignore[arg-type]
    return conf


def standalone_consumer_config(kafka: KafkaSettings, name: str, **overrides: object) -> Config:
    """A consumer that is assigned partitions directly: never joins ``name`` (required by librdkafka), never
    commits, and reports the end of each partition."""
    conf: Config = {
        **_base(kafka),
        "group.id": name,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": kafka.fetch_wait_ms,
    }
    conf.update(overrides)  # type: ignore[arg-type]
    return conf


def consumer(kafka: KafkaSettings, group_id: str, *, background: bool = False, **overrides: object) -> Consumer:
    return Consumer(consumer_config(kafka, group_id, background=background, **overrides))


def standalone_consumer(kafka: KafkaSettings, name: str, **overrides: object) -> Consumer:
    return Consumer(standalone_consumer_config(kafka, name, **overrides))


def producer(kafka: KafkaSettings, **overrides: object) -> Producer:
    """A producer for outputs: acks=all, idempotent where the broker makes that cheap, lz4, short linger."""
    conf: Config = {
        **_base(kafka),
        "linger.ms": 2,  # latency-bounded batching: a few ms buys big produce batches
        "acks": "all",
        # retries inside librdkafka never duplicate or reorder (see Settings.idempotent_producer)
        "enable.idempotence": kafka.producer_idempotence,
        "queue.buffering.max.messages": 500_000,
        "compression.type": "lz4",
    }
    conf.update(overrides)  # type: ignore[arg-type]
    return Producer(conf)


def admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(_base(kafka))


def admin_at(address: str) -> AdminClient:
    """An admin client for a plaintext broker at ``address`` (the embedded broker's readiness probe)."""
    return AdminClient({"bootstrap.servers": address})


class _ErrorLog:
    """Logs each kind of consume error at most once per ``interval_s`` (with how often it repeated)."""
    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, int], tuple[float, int]] = {}

    def __call__(self, where: str, err: KafkaError) -> None:
        key = (where, err.code())
        now = time.monotonic()
        last, repeats = self._last.get(key, (float("-inf"), 0))
        if now - last >= self.interval_s:
            more = f" (and {repeats} more like it)" if repeats else ""
            log.warning("%s: %s%s", where, err, more)
            self._last[key] = (now, 0)
        else:
            self._last[key] = (last, repeats + 1)


_error_log = _ErrorLog()


def records(
    client: Consumer,
    max_messages: int,
    timeout: float,
    *,
    where: str = "consume",
    on_eof: Callable[[Message], None] | None = None,
    on_error: Callable[[KafkaError], None] | None = None,
) -> list[Message]:
    """``client.consume`` without partition EOFs (handed to ``on_eof`` if given) and without errors (handed to
    ``on_error``, by default logged once per kind and minute); what is returned is only data."""
    out = []
    for msg in client.consume(max_messages, timeout):
        err = msg.error()
        if err is None:
            out.append(msg)
        elif err.code() == KafkaError._PARTITION_EOF:
            if on_eof is not None:
                on_eof(msg)
        elif on_error is not None:
            on_error(err)
        else:
            _error_log(where, err)
    return out
