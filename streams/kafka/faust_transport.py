"""Faust's aiokafka transport with a configurable fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Apache Kafka answers a fetch as soon
as data arrives, so the value only matters when a topic is idle; Tansu (the embedded broker) holds
every fetch for the full wait, which measured p50 ≈ 500 ms from produce to consume at 1500 ms,
≈ 105 ms at 500 ms and ≈ 3 ms at 5 ms. ``StreamscoreApp`` sets it from
``Settings.fetch_max_wait_ms`` instead.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its fetcher at start(), after this call.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class StreamscoreApp(faust.App):
    """A Faust app whose consumer uses ``fetch_max_wait_ms`` instead of Faust's fixed 1500 ms."""
    def __init__(self, *args: Any, fetch_max_wait_ms: int = 500, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)
