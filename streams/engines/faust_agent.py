"""Faust agents of the scoring flow: topic -> validate -> score -> publish -> ack.

The agent reads micro-batches with ``noack_take`` and acks each input only after every output of
its batch is acknowledged by the broker; Faust commits acked offsets every ``commit_interval``.
Up to ``MAX_BATCHES_IN_FLIGHT`` batches await delivery at once, so the broker round trip does not
serialise the agent (waiting batch by batch capped it near 6k events/s).
(``take``/``take_events`` ack in a ``finally`` even when the batch is abandoned half-way, which
could commit an input whose prediction was never written.)

A batch whose delivery fails never crashes the agent (it used to: one DeliveryError raised on the next batch).
The publisher retries transient failures for as long as it takes; an output refused for good becomes an
``output_rejected`` dead letter about its input, and the input is acked once that letter is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faust

from streams import metrics
from streams.engines.batch import adopt_offsets, batch_group_id
from streams.kafka.publisher import Delivery, Publisher
from streams.scoring.pipeline import InboundMessage, ScoringPipeline
from streams.scoring.records import RecordBuilder
from streams.settings import KafkaSettings, ScoringSettings

log = logging.getLogger(__name__)

MAX_BATCHES_IN_FLIGHT = 16


def inbound(message: faust.types.Message) -> InboundMessage:
    return InboundMessage(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        int(message.timestamp * 1000) if message.timestamp else None,
        list(message.headers or ()),
    )


def register_scoring_agent(
    app: faust.App, kafka: KafkaSettings, settings: ScoringSettings, pipeline: ScoringPipeline, publisher: Publisher
) -> faust.types.AgentT:
    source = app.topic(
        *settings.input_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=kafka.partitions,
    )
    # Before Faust joins <app_id>: start where the batch engine left off if it got further (engine switch).
    adopt_offsets(kafka, kafka.app_id, batch_group_id(kafka), settings.input_topics)
    # Validation and ONNX run on one worker thread so a large batch never blocks heartbeats.
    scoring_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")

    @app.agent(source, name="score")
    async def score(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        within = settings.batch_within_ms / 1000
        # Deliveries overlap: a batch's inputs are acked when its outputs land, while later batches are
        # already being scored. Faust commits only up to the first un-acked offset of a partition.
        in_flight = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)

        async def ack_when_delivered(delivery: Delivery, events: list[faust.EventT]) -> None:
            try:
                delivery = await delivered_or_dead_lettered(delivery, pipeline.records, publisher, loop)
                for event in events:
                    await stream.ack(event)
            except asyncio.CancelledError:  # stopping: unacked inputs are consumed again after restart
                raise
            except Exception:  # never ack what is not delivered; the agent keeps scoring
                log.exception("scoring agent: a batch of %d inputs was not acked", len(events))
            finally:
                in_flight.release()

        pending: set[asyncio.Task] = set()
        async for events in stream.noack_take(settings.batch_size, within=within):
            await in_flight.acquire()
            received_ms = time.time_ns() // 1_000_000
            batch = [inbound(event.message) for event in events]
            result = await loop.run_in_executor(scoring_thread, pipeline.process, batch, received_ms)
            task = asyncio.create_task(ack_when_delivered(publisher.send_batch(result.outputs, loop), list(events)))
            pending.add(task)
            task.add_done_callback(pending.discard)

    return score


async def delivered_or_dead_lettered(delivery: Delivery, records: RecordBuilder, publisher: Publisher,
                                     loop: asyncio.AbstractEventLoop) -> Delivery:
    """Wait for ``delivery``; outputs the broker refused for good are replaced by ``output_rejected`` dead
    letters about their inputs, and those are waited for too. Returns the last delivery waited for."""
    while True:
        await delivery.wait_done()
        letters = []
        for out, err in delivery.rejected:
            if out.topic == records.dead_letter_topic:  # a letter about a letter would be refused again
                log.error("dead letter refused by the broker (%s); input left in its topic", err)
                continue
            metrics.DEAD_LETTERS.labels(getattr(out.source, "topic", "?"), "output_rejected").inc()
            log.warning("output to %s refused by the broker (%s): dead-lettered", out.topic, err)
            letters.append(records.output_rejected(out, err))
        if not letters:
            return delivery
        delivery = publisher.send_batch(letters, loop)
