"""The publisher's shared per-batch delivery callback finds the output each failed report is about."""

from __future__ import annotations

import socket
import time

from streams.kafka.publisher import Outbound, Publisher
from streams.settings import Settings


def _dead_port() -> int:
    with socket.socket() as sock:  # nothing listens there: every message times out in librdkafka
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failed_reports_of_one_batch_are_matched_to_their_own_outputs():
    publisher = Publisher(Settings(embedded_port=_dead_port()).kafka, recreate_topics=False,
                          **{"message.timeout.ms": 300})
    try:
        # two equal outputs (interchangeable, each matched once) and one that differs only in its key
        outs = [Outbound("t", b"k", b"same"), Outbound("t", b"k", b"same"), Outbound("t", None, b"same")]
        delivery = publisher.send_batch(outs)
        deadline = time.monotonic() + 10
        while publisher.retrying < 3 and time.monotonic() < deadline:
            publisher.serve(0.05)  # served on this thread, as the engines do
        with publisher._retry_lock:
            queued = [entry[2] for entry in publisher._retries]
        assert sorted(map(id, queued)) == sorted(map(id, outs))  # each output exactly once, by identity
        assert not delivery.done.is_set() and delivery.pending == 3 and not delivery.rejected
    finally:
        publisher._stop.set()
