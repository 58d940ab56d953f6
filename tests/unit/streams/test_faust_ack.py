"""The Faust agent acks a delivered batch at once (``_Consumer.ack_batch``): the bookkeeping Faust's
``Consumer.ack`` leaves message by message, nothing more, nothing less."""

from __future__ import annotations

import uuid

from faust.types import TP, Message

from streams.kafka.faust_transport import StreamscoreApp

TOPIC = "features"


def consumer_with_tracked(offsets: range, committed: int) -> tuple[object, list[Message]]:
    """A consumer (never started) whose partition is committed up to ``committed``, with ``offsets`` tracked."""
    app = StreamscoreApp(f"ack-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1")
    app.batch_topic(app.topic(TOPIC, key_type=bytes, value_type=bytes), lambda tp, messages: None)
    app.topics._acking_topics.add(TOPIC)  # what the conductor does once it has subscribed (an acking topic)
    consumer = app.consumer
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = committed
    messages = [Message(TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=tp) for offset in offsets]
    consumer._track_batch(tp, messages)
    return consumer, messages


def bookkeeping(consumer: object) -> tuple:
    tp = TP(TOPIC, 0)
    return (sorted(consumer._acked[tp]), sorted(consumer._acked_index[tp]), consumer._n_acked,
            sorted(m.offset for m in consumer._unacked_messages))


def test_a_batch_ack_leaves_what_acking_each_message_leaves():
    # offsets 10..19, committed up to 12 (10, 11 are below it), 15 acked before: 12-14 and 16-19 are new acks
    one_by_one, ones = consumer_with_tracked(range(10, 20), committed=12)
    at_once, batch = consumer_with_tracked(range(10, 20), committed=12)
    one_by_one.ack(ones[5])
    at_once.ack(batch[5])
    for message in ones:
        one_by_one.ack(message)
    at_once.ack_batch(batch)
    assert bookkeeping(at_once) == bookkeeping(one_by_one) == (
        [12, 13, 14, 15, 16, 17, 18, 19], [12, 13, 14, 15, 16, 17, 18, 19], 8, [10, 11])
    assert all(m.acked for m in batch)
    at_once.ack_batch(batch)  # acked again (a redelivered report): nothing changes
    assert bookkeeping(at_once) == bookkeeping(one_by_one)
