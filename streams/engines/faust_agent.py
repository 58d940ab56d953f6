"""The Faust agent of the scoring flow: topic -> validate -> score -> publish -> ack.

The agent takes whole fetched batches: ``StreamscoreApp.batch_topic`` (streams/kafka/faust_transport.py) hands
each partition's records from one ``getmany`` to the agent's queue as ``FetchedBatch`` es of at most
``MAX_BATCH_EVENTS`` ``InboundMessage`` s, built straight from the fetched records (no Faust ``Message`` per
event), and the agent iterates them. Faust's per-event path (conductor → topic queue → stream →
``noack_take``, two tasks per event in the fetcher) capped an empty agent near 15k events/s and ours at 5–7k;
per batch it costs nothing measurable (see docs/benchmarks.md).

At-least-once: a batch's inputs are acked (``ack_batch``, Faust's ``Consumer.ack`` for all of them) only after
every output of the batch is acknowledged by the broker; Faust's commit handler commits acked offsets every
``commit_interval``, and rebalances wait for unacked inputs. Up to ``MAX_BATCHES_IN_FLIGHT`` batches await
delivery at once, so the broker round trip does not serialise the agent, and a fetched batch is cut into
batches of at most ``MAX_BATCH_EVENTS`` so that what is in flight stays bounded. A batch that can never be
acked (the agent crashed on it, or its delivery failed for a reason other than a refused output) is released
and the consumer rewinds to its committed offsets, so it is read again and nothing waits for it: neither a
commit past it nor a shutdown that hangs.

A batch whose delivery fails never crashes the agent. The publisher retries transient failures for as long as
it takes; an output refused for good becomes an ``output_rejected`` dead letter about its input, and the input
is acked once that letter is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faust
from faust.types import TP

from streams import metrics
from streams.engines.batch import adopt_offsets, batch_group_id
from streams.engines.heap import freeze_startup_heap
from streams.kafka.faust_transport import FetchedBatch, StreamscoreApp
from streams.kafka.publisher import Delivery, Publisher
from streams.scoring.pipeline import InboundMessage, ScoringPipeline
from streams.scoring.records import RecordBuilder
from streams.settings import KafkaSettings, ScoringSettings

log = logging.getLogger(__name__)

MAX_BATCHES_IN_FLIGHT = 16
# A partition's records from one getmany reach the agent in batches of at most this many. A getmany holds up
# to consumer_max_fetch_size (1 MiB) per partition, ~5k demo events, and 16 such batches in flight held their
# inputs and outputs: faust scoring only, 100k backlog, alternated `make bench` runs: peak RSS 269-343 MB
# uncut, 224-233 at 2048 (214 at 1024); events/s 49-72k uncut, 64-70k at 2048, 45-46k at 1024.
MAX_BATCH_EVENTS = 2048
# Fetched batches queued for the agent: the fetcher waits when they are full (aiokafka keeps prefetching
# up to its own buffer), so memory stays bounded.
MAX_BATCHES_QUEUED = 8
# At stop, batches on their way to the broker are waited for this long before Faust's final commit.
DRAIN_TIMEOUT_S = 10.0


class ScoringAgent:
    """The registered agent, and a fault hook for tests (``/debug/fail?part=faust-agent``)."""
    def __init__(self) -> None:
        self.agent: faust.types.AgentT | None = None
        self.failures = 0  # the agent raises on its next ``failures`` batches, as if scoring had crashed

    def inject_failures(self, times: int) -> None:
        self.failures += times


def register_scoring_agent(
    app: StreamscoreApp, kafka: KafkaSettings, settings: ScoringSettings, pipeline: ScoringPipeline,
    publisher: Publisher,
) -> ScoringAgent:
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
    batches = app.channel(maxsize=MAX_BATCHES_QUEUED)
    # The queue of the agent's running stream. Put straight into it, never into the channel's subscribers: a
    # crashed agent's stream lingers among them (a WeakSet) until collected and would swallow batches.
    live: list[asyncio.Queue] = []

    async def to_agent(tp: TP, batch: FetchedBatch) -> None:
        while not live:  # the agent is (re)starting
            await asyncio.sleep(0.01)
        await live[0].put(batch)

    # Inputs are built straight from the fetched records: InboundMessage takes the fields in make_input's order.
    app.batch_topic(source, to_agent, make_input=InboundMessage, max_batch=MAX_BATCH_EVENTS)
    # Validation and ONNX run on one worker thread so a large batch never blocks heartbeats.
    scoring_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
    in_flight = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)

    def drop(batch: FetchedBatch) -> None:
        """A batch that will never be acked: forget it and read again from the committed offsets."""
        app.consumer.release(batch)
        app.consumer.rewind()

    async def ack_when_delivered(delivery: Delivery, batch: FetchedBatch) -> None:
        try:
            await delivered_or_dead_lettered(delivery, pipeline.records, publisher, asyncio.get_running_loop())
            app.consumer.ack_batch(batch)
        except asyncio.CancelledError:  # stopping: unacked inputs are consumed again after restart
            raise
        except Exception:  # never ack what is not delivered; the agent keeps scoring
            log.exception("scoring agent: a batch of %d inputs was not delivered; reading again from the "
                          "committed offsets", len(batch))
            drop(batch)
        finally:
            in_flight.release()

    pending: set[asyncio.Task] = set()
    handle = ScoringAgent()

    scoring: list[bool] = [False]  # a batch is on the scoring thread

    async def drain() -> None:
        """Rebalance or stop: wait (bounded) for the batch being scored and those on their way to be acked."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (pending or scoring[0]) and time.monotonic() < deadline:
            if pending:
                await asyncio.wait(set(pending), timeout=max(0.0, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0.005)

    app.batch_drains.append(drain)

    def score_and_send(batch: list[InboundMessage], received_ms: int, loop: asyncio.AbstractEventLoop) -> Delivery:
        """On the scoring thread: score, produce, and serve the delivery reports due so far. Served here, a report
        costs no GIL hand-off; the publisher's poll thread, contending with this thread for every report, was
        what held the agent back (streams/kafka/publisher.py). Producing here also keeps the event loop free."""
        result = pipeline.process(batch, received_ms)
        delivery = publisher.send_batch(result.outputs, loop)
        publisher.serve()
        return delivery

    @app.agent(batches, name="score")
    async def score(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        freeze_startup_heap()  # full collections walked the whole start-up heap (streams/engines/heap.py)
        batch: FetchedBatch | None = None
        live[:] = [stream.channel.queue]
        try:
            async for batch in stream:
                if batch.generation_id != app.consumer_generation_id:
                    app.consumer.release(batch)  # fetched before a rebalance: read again by the new owner
                    continue
                if handle.failures:
                    handle.failures -= 1
                    raise RuntimeError("injected scoring agent failure (debug endpoint)")
                await in_flight.acquire()
                received_ms = time.time_ns() // 1_000_000
                scoring[0] = True
                try:
                    delivery = await loop.run_in_executor(scoring_thread, score_and_send, batch.inputs, received_ms,
                                                          loop)
                    task = asyncio.create_task(ack_when_delivered(delivery, batch))
                except BaseException:
                    in_flight.release()
                    raise
                finally:
                    scoring[0] = False
                pending.add(task)
                task.add_done_callback(pending.discard)
                batch = None
        except asyncio.CancelledError:
            raise
        except Exception:  # Faust restarts the agent; the batch it held must not hold up commits or shutdown
            live.clear()
            log.exception("scoring agent crashed on a batch of %d inputs; reading again from the committed offsets",
                          len(batch) if batch is not None else 0)
            if batch is not None:
                drop(batch)
            raise
        finally:
            live.clear()

    handle.agent = score
    return handle


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
