"""The Faust agent's batches (``FetchedBatch``) are tracked and acked as one: the bookkeeping Faust's
``Consumer.ack`` leaves message by message for the same offsets, nothing more, nothing less."""

from __future__ import annotations

import uuid

from faust.types import TP, Message

from streams.kafka.faust_transport import FetchedBatch, StreamscoreApp
from streams.scoring.records import InboundMessage

TOPIC = "features"
TP0 = TP(TOPIC, 0)


def consumer_committed_at(committed: int) -> object:
    """A consumer (never started) of an acking topic whose partition 0 is committed up to ``committed``."""
    app = StreamscoreApp(f"ack-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1")
    app.batch_topic(app.topic(TOPIC, key_type=bytes, value_type=bytes), lambda tp, batch: None,
                    make_input=InboundMessage, max_batch=100)
    app.topics._acking_topics.add(TOPIC)  # what the conductor does once it has subscribed (an acking topic)
    consumer = app.consumer
    consumer._committed_offset[TP0] = committed
    return consumer


def bookkeeping(consumer: object) -> tuple:
    return sorted(consumer._acked[TP0]), sorted(consumer._acked_index[TP0]), consumer._n_acked


def test_a_batch_ack_leaves_what_acking_each_of_its_messages_leaves():
    # offsets 10..19, committed up to 12 (10, 11 are below it), 15 acked before: 12-14 and 16-19 are new acks
    one_by_one, at_once = consumer_committed_at(12), consumer_committed_at(12)
    messages = [Message(TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP0) for offset in range(10, 20)]
    for message in messages:
        one_by_one.track_message(message)
    one_by_one.ack(messages[5])
    for message in messages:
        one_by_one.ack(message)

    early = FetchedBatch(TP0, [InboundMessage(TOPIC, 0, 15, b"k", b"v")], generation_id=1)
    batch = FetchedBatch(TP0, [InboundMessage(TOPIC, 0, offset, b"k", b"v") for offset in range(10, 20)], 1)
    at_once._track_batch(TP0, early)
    at_once._track_batch(TP0, batch)
    assert len(at_once._unacked_messages) == 2
    at_once.ack_batch(early)
    at_once.ack_batch(batch)
    assert bookkeeping(at_once) == bookkeeping(one_by_one) == (
        [12, 13, 14, 15, 16, 17, 18, 19], [12, 13, 14, 15, 16, 17, 18, 19], 8)
    assert batch.acked and len(at_once._unacked_messages) == 0 == len(one_by_one._unacked_messages) - 2  # 10, 11
    at_once.ack_batch(batch)  # acked again: nothing changes
    assert bookkeeping(at_once) == bookkeeping(one_by_one)


def test_a_released_batch_is_no_longer_waited_for():
    consumer = consumer_committed_at(0)
    batch = FetchedBatch(TP0, [InboundMessage(TOPIC, 0, 0, b"k", b"v")], generation_id=1)
    consumer._track_batch(TP0, batch)
    consumer.release(batch)
    assert len(consumer._unacked_messages) == 0 and bookkeeping(consumer) == ([], [], 0)
