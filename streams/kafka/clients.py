"""Every confluent-kafka client of the project comes from here, and every consume loop reads ``records``.

Defaults, security and the embedded-broker tweaks are set once (``Settings.kafka_client_config``), so a
lane cannot forget SASL or use another fetch wait by accident. ``records`` is ``consume`` without the
noise: partition EOFs are dropped (or counted, for readers that stop at the end) and other errors are
logged once per kind and minute (``streams.logs.Summariser``) instead of once per poll (a worker logged
7,195 lines in 45 s of broker outage when every poll logged).

>>> from streams.settings import Settings
>>> conf = consumer_config(Settings().kafka, group_id="g", background=True)
>>> conf["group.id"], conf["enable.auto.commit"], conf["fetch.wait.max.ms"]
('g', False, 250)
>>> standalone_consumer_config(Settings().kafka, "reader")["enable.partition.eof"]
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from streams.logs import SUMMARY, summarise_root
from streams.settings import KafkaSettings

__all__ = ["admin", "admin_at", "consumer", "consumer_config", "producer", "quiet", "records", "standalone_consumer",
           "standalone_consumer_config"]

log = logging.getLogger(__name__)

Config = dict[str, str | int | bool | float]


_rdkafka_log: logging.Logger | None = None


def quiet(interval_s: float | None = None) -> None:
    """From now on, every client of this process sends librdkafka's log to the ``librdkafka`` logger, summarised
    (``streams.logs.SUMMARY``: one line per facility such as FAIL or REQTMOUT and interval, with a count of the rest).

    Every command calls this, the worker and the archiver child included: librdkafka logs every failed connect of
    every client (~200 lines for one `tail` against a stopped broker, 640 in a 50 s outage from the archiver
    child, which did not call it). confluent-kafka then delivers a client's log lines when that client is polled
    (consume/poll), never from librdkafka's threads: an admin client that is never polled drops them with it,
    a quiet producer keeps them queued until its next poll.
    """
    global _rdkafka_log
    summarise_root(interval_s)  # the command line's handler: consume errors (``records``) are summarised there
    if _rdkafka_log is None:
        _rdkafka_log = logging.getLogger("librdkafka")
        _rdkafka_log.addFilter(SUMMARY)


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


def _error_log(where: str, err: KafkaError) -> None:
    """A consume error, one line per ``where`` and error code and interval (``streams.logs.SUMMARY`` counts the
    rest: a worker logged 7,195 lines in 45 s of broker outage when every poll logged)."""
    log.warning("%s: %s", where, err, extra={"summary_kind": (where, err.code())})


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
