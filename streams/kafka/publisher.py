"""Publishing outputs with confirmed delivery.

The scoring flow acks an input only after every output derived from it is *delivered* (acknowledged
by the broker), which is what makes the flow at-least-once. ``Publisher.send_batch`` returns a
``Delivery`` handle that completes when the whole batch is acknowledged; librdkafka retries
transient errors itself, a permanent error surfaces as an exception so the worker stops without
acking (and the batch is consumed again after restart).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError

from streams.kafka import clients
from streams.settings import KafkaSettings

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Outbound:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None
    partition: int | None = None


class DeliveryError(RuntimeError):
    pass


@dataclass
class Delivery:
    """Completion of one batch: counts down as the broker acknowledges each message."""

    pending: int
    errors: list[KafkaError] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    _future: asyncio.Future | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self.errors.append(err)
        self.pending -= 1  # callbacks run on the single poll thread, so no lock is needed
        if self.pending == 0:
            self._finish()

    def _finish(self) -> None:
        self.done.set()
        if self._future is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise DeliveryError(f"{len(self.errors)} message(s) not delivered: {self.errors[0]}")

    def wait(self, timeout: float | None = None) -> None:
        if not self.done.wait(timeout):
            raise DeliveryError(f"{self.pending} message(s) still undelivered after {timeout}s")
        self.raise_for_errors()

    async def wait_async(self) -> None:
        if not self.done.is_set():
            await self._future  # type: ignore[misc]
        self.raise_for_errors()


class Publisher:
    """A confluent-kafka producer with a background poll thread serving delivery callbacks."""

    def __init__(self, kafka: KafkaSettings, **overrides: str | int) -> None:
        self._producer = clients.producer(kafka, **overrides)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="publisher-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send_batch(self, messages: Sequence[Outbound], loop: asyncio.AbstractEventLoop | None = None) -> Delivery:
        delivery = Delivery(pending=len(messages))
        if loop is not None:
            delivery._loop, delivery._future = loop, loop.create_future()
        if not messages:
            delivery._finish()
            return delivery
        produce, on_delivery = self._producer.produce, delivery._on_delivery
        for m in messages:
            kwargs = {} if m.partition is None else {"partition": m.partition}
            while True:
                try:
                    produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery, **kwargs)
                    break
                except BufferError:  # local queue full: the poll thread drains it
                    time.sleep(0.005)
        return delivery

    def connect(self, topic: str, timeout: float = 10.0) -> None:
        """Fetch the topic's metadata (and so open the connections) before the first send."""
        self._producer.list_topics(topic, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._poller.join(timeout=1)
        remaining = self._producer.flush(timeout)  # serves the last callbacks on this thread
        if remaining:
            raise DeliveryError(f"{remaining} message(s) undelivered at close")
