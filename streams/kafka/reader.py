"""Reading topics outside any consumer group: for `tail`, the demo, tests and the benchmark.

Partitions are assigned directly (no group join, so no rebalance wait) and nothing is committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from streams.kafka import clients
from streams.settings import Settings


def _consumer(settings: Settings, topic: str, from_beginning: bool) -> tuple[Consumer, int, set[int]]:
    """Assigned to every partition: at the start, or at the end as it is NOW (the high watermark, read before this
    returns: a message produced after it is seen, which OFFSET_END, resolved at the first fetch, does not promise)."""
    consumer = clients.standalone_consumer(settings.kafka, "streamscore-reader", **{"fetch.wait.max.ms": 50})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KeyError(f"topic {topic!r} does not exist")
        starts = {p: OFFSET_BEGINNING for p in meta.partitions}
        if not from_beginning:
            for p in meta.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                starts[p] = high if high >= 0 else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p, start in starts.items()])
        at_end = set() if from_beginning else _skip_to_end(consumer, topic, len(meta.partitions))
    except BaseException:
        consumer.close()
        raise
    return consumer, len(meta.partitions), at_end


def _skip_to_end(consumer: Consumer, topic: str, n_partitions: int, timeout_s: float = 30.0) -> set[int]:
    """Read (and drop) up to each partition's end-of-partition event: the true end.

    The embedded broker's ListOffsets answer lags its log (measured: high watermark 504 for a partition holding
    1002 records), so a reader started at the watermark alone printed ~500 old messages per partition.
    """
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(at_end) < n_partitions and time.monotonic() < deadline:
        for msg in clients.records(consumer, 10_000, 0.2, on_eof=lambda m: at_end.add(m.partition()),
                                   on_error=lambda err: _fail(topic, err)):
            at_end.discard(msg.partition())
    return at_end  # partitions known to be at their end now (their EOF event is spent)


def follow(
    settings: Settings, topic: str, from_beginning: bool = True, stop_at_end: bool = False, idle_timeout: float = 0.2
) -> Iterator[Message]:
    """Messages of every partition; with ``stop_at_end``, stop once all partitions hit their end.

    The consumer is assigned before this returns (a missing topic raises ``KeyError`` here, not at the first
    message), so what is produced after the call is read, even when starting at the end.
    """
    consumer, n_partitions, at_end = _consumer(settings, topic, from_beginning)
    return _follow(consumer, topic, n_partitions, stop_at_end, idle_timeout, at_end)


def _follow(consumer: Consumer, topic: str, n_partitions: int, stop_at_end: bool, idle_timeout: float,
            at_end: set[int]) -> Iterator[Message]:
    try:
        while True:
            eofs: list[Message] = []
            for msg in clients.records(consumer, 1000, idle_timeout, on_eof=eofs.append,
                                       on_error=lambda err: _fail(topic, err)):
                at_end.discard(msg.partition())
                yield msg
            at_end.update(m.partition() for m in eofs)  # an EOF comes after the data of its partition
            if stop_at_end and len(at_end) == n_partitions:
                return
    finally:
        consumer.close()


def _fail(topic: str, err: KafkaError) -> None:
    raise RuntimeError(f"reading {topic}: {err}")


def read_all(settings: Settings, topic: str) -> list[Message]:
    """Everything currently in the topic."""
    return list(follow(settings, topic, from_beginning=True, stop_at_end=True))


def wait_for(settings: Settings, topic: str, predicate, timeout: float) -> list[Message]:
    """Read ``topic`` from the start until ``predicate(messages)`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    messages: list[Message] = []
    consumer, _, _ = _consumer(settings, topic, True)
    try:
        while not predicate(messages) and time.monotonic() < deadline:
            messages.extend(clients.records(consumer, 5000, 0.2, where=f"reading {topic}"))
        return messages
    finally:
        consumer.close()
