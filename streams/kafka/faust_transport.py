"""Faust's aiokafka transport: a configurable fetch wait, and whole record batches for batch agents.

Fetch wait: Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Apache Kafka answers a fetch
as soon as data arrives, so the value only matters when a topic is idle; Tansu (the embedded broker)
holds every fetch for the full wait, which measured p50 ≈ 500 ms from produce to consume at 1500 ms,
≈ 105 ms at 500 ms and ≈ 3 ms at 5 ms. ``StreamscoreApp`` sets it from ``Settings.fetch_max_wait_ms``.

Batches: Faust hands every record to the conductor on its own (``Consumer._drain_messages`` runs
``wait_first(callback(message), ...)``, two tasks per event, then topic queue → stream → event), which caps
an agent that does nothing near 15k events/s on the 2-core dev box. A topic registered with
``StreamscoreApp.batch_topic`` skips all of that: the fetcher passes each partition's records from one
``getmany`` to the topic's sink as ``FetchedBatch`` es of at most ``max_batch`` inputs, each input built
straight from the aiokafka record by the sink's own ``make_input`` (no Faust ``Message`` per record: building
one cost 3-4 us on the event loop, the input 0.2). Everything that keeps Faust's at-least-once bookkeeping is
kept, per batch instead of per message: each batch is tracked (``_unacked_messages``, as ``track_message``
does) before the sink sees it, the sink acks it (``ack_batch``, Faust's ``Consumer.ack`` for all its offsets)
once its outputs are delivered, the commit handler commits acked offsets, rebalances wait for unacked batches
(``wait_empty``) and the generation id is checked per batch.

Two guards Faust lacks: ``_new_offset`` commits only a run of acked offsets that starts exactly where the
partition was read from (Faust skips that check while nothing is committed yet, so acks after a lost batch
could commit past it), and ``rewind`` lets an agent that dropped a batch (crash, failed delivery) forget it
and read again from the committed offsets, so shutdown and rebalances do not wait forever for its acks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

# (topic, partition, offset, key, value, timestamp_ms, headers) -> the sink's own input record
InputFactory = Callable[[str, int, int, bytes | None, bytes | None, int | None, list | None], Any]


class FetchedBatch:
    """Up to ``max_batch`` consecutive records of one partition from one fetch: tracked, handed to the sink and
    acked as one (Faust's ``Consumer`` keeps it in ``_unacked_messages`` where it keeps a ``Message``)."""

    __slots__ = ("tp", "inputs", "generation_id", "acked", "refcount", "__weakref__")

    def __init__(self, tp: TP, inputs: list[Any], generation_id: int) -> None:
        self.tp = tp
        self.inputs = inputs  # what the sink's make_input built, in offset order; each has an ``offset``
        self.generation_id = generation_id  # the consumer generation it was fetched in
        self.acked = False
        self.refcount = 0  # Faust's wait_empty logs it for what it waits for

    @property
    def topic(self) -> str:
        return self.tp.topic

    def __len__(self) -> int:
        return len(self.inputs)


BatchSink = Callable[[TP, FetchedBatch], Awaitable[None]]


@dataclass(frozen=True)
class BatchRoute:
    """Where a batch topic's records go: the sink, how an input is built, how many inputs a batch holds."""
    sink: BatchSink
    make_input: InputFactory
    max_batch: int


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its fetcher at start(), after this call.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._read_from: dict[TP, int] = {}
        self._seen: set[TP] = set()
        self._rewind = False
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _reset_state(self) -> None:
        super()._reset_state()
        self._read_from: dict[TP, int] = {}  # first offset read since assignment, for a partition never committed
        self._seen: set[TP] = set()  # partitions read from since the last seek
        self._rewind = False  # asked for by ``rewind``, done by the fetcher loop between two fetches

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        if self.app.batch_routes and not self.should_stop and self.assignment():
            # Faust forgets the acked offsets of revoked partitions before it commits (its commit in the
            # rebalance then has nothing to commit for them), so everything acked since the last periodic commit
            # was scored again by the next owner. Stop taking batches, let those in progress be acked, commit.
            self.stop_flow()
            self.app.flow_control.suspend()
            for drain in self.app.batch_drains:
                await drain()
            await self.commit()
        for tp in revoked:
            self._read_from.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        self._seen.clear()
        await super().perform_seek()

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if acked:
            acked.sort()
            # The run must start at the committed offset, or where reading started if nothing is committed yet.
            # Faust checks the head of the acked run only when the committed offset is truthy (not None, not 0),
            # and lets it start one past the committed offset.
            committed = self._committed_offset[tp]
            start = committed if committed is not None else self._read_from.get(tp)
            if start is None or (acked[0] > start and not self._gap[tp].overlaps(start)):
                return None
        return super()._new_offset(tp)

    async def wait_empty(self) -> None:
        # Faust calls this before its commit on a rebalance and at stop. First the batches being scored or on
        # their way to the broker are acked (bounded by the agent), or their inputs would be scored again by the
        # next owner. What is still unacked then sat in the agent's queue, which Faust has just cleared
        # (``flow_control.clear``): it is read again from the committed offset, and waiting for it would hang
        # the rebalance. Measured: 90-450 duplicates per graceful handover at 600 events/s without this.
        if self.app.batch_routes:
            for drain in self.app.batch_drains:
                await drain()
            self._unacked_messages.clear()
        await super().wait_empty()

    def _track_batch(self, tp: TP, batch: FetchedBatch) -> None:
        """``track_message`` for a whole batch: pending ack (``_unacked_messages``, a WeakSet) and the sensors.

        ``track_message`` per message was 17 % of the GIL-held time of a Faust worker under a backlog (py-spy
        --gil): a WeakSet add and a call into every sensor per event. Here the batch is added once, and Faust's
        ``Monitor`` (the only sensor unless an app adds some) gets its counters once per batch; any other sensor
        is told once per batch too, with the batch and its last offset."""
        self._unacked_messages.add(batch)
        n, last = len(batch.inputs), batch.inputs[-1].offset
        for sensor in self.app.sensors:
            if type(sensor).on_message_in is Monitor.on_message_in:
                # Monitor.on_message_in's bookkeeping, n events at once (message.time_in is read only by
                # on_message_out, which the batch path never calls: inputs are acked through ack_batch)
                sensor.messages_received_total += n
                sensor.messages_active += n
                sensor.messages_received_by_topic[tp.topic] += n
                sensor.tp_read_offsets[tp] = last
            else:
                sensor.on_message_in(tp, last, batch)

    def ack_batch(self, batch: FetchedBatch) -> None:
        """``Consumer.ack`` for every input of ``batch`` at once. Per message it takes the ack lock, looks the
        topic and the partition up and discards a weak reference, on the event loop's thread: 2.1 us per message
        (measured; 0.5 us when 2048 Faust messages were acked in one such step). Here: one step per batch."""
        with ack_lock:  # as Consumer.ack: the acked flag and the offset bookkeeping change in one step
            if batch.acked:
                return
            batch.acked = True
            self._unacked_messages.discard(batch)
            if not self.app.topics.acks_enabled_for(batch.topic):
                return
            tp = batch.tp
            committed, acked_index = self._committed_offset[tp], self._acked_index[tp]
            offsets = [m.offset for m in batch.inputs
                       if (committed is None or m.offset >= committed) and m.offset not in acked_index]
            if not offsets:
                return
            acked_index.update(offsets)
            self._acked[tp].extend(offsets)
            self._n_acked += len(offsets)
            notify(self._waiting_for_ack)

    def release(self, batch: FetchedBatch) -> None:
        """Forget a tracked batch that will never be acked (dropped): nothing waits for it."""
        self._unacked_messages.discard(batch)

    def rewind(self) -> None:
        """Read every partition again from its committed offset, or from where reading started if nothing is
        committed yet (after a batch was dropped unacked). Done by the fetcher loop before its next fetch, so no
        fetch is under way while it seeks (records fetched from a position the seek has just replaced would
        otherwise look like a gap, and Faust treats a gap as acked). Seeking to the committed offsets alone is
        not enough: aiokafka leaves a partition without a commit where it is."""
        self._unacked_messages.clear()
        self._rewind = True

    async def _do_rewind(self) -> None:
        self._rewind = False
        self._seen.clear()
        for tp in self.assignment():
            committed = self._committed_offset[tp]
            target = committed if committed is not None else self._read_from.get(tp)
            if target is not None:
                await self.seek(tp, target)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the fetcher's loop
        routes: dict[str, BatchRoute] = self.app.batch_routes
        if not routes:
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset, read_from, to_message = self._read_offset, self._read_from, self._to_message
        commit_every = self._commit_every
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if self._rewind:
                    await self._do_rewind()
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # as Faust's getmany: a paused flow reads again from the committed offsets
                    await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                for tp, batch in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    route = routes.get(tp.topic)
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    last = read_offset[tp]
                    kept = []
                    for record in batch:
                        offset = record.offset
                        if last is not None and offset < last:
                            continue  # read before (a seek back races the fetch): Faust drops these too
                        if last is not None and offset - last > 1:  # compaction / transaction markers
                            await self._add_gap(tp, last + 1, offset)
                        kept.append(record)
                        last = offset
                    if not kept:
                        continue
                    first = kept[0].offset
                    read_from.setdefault(tp, first)
                    if tp not in self._seen:  # the first read after a seek to the committed offset
                        self._seen.add(tp)
                        committed = self._committed_offset[tp]
                        if committed is not None and first > committed:  # records gone (retention, compaction)
                            self._gap[tp].addi(committed, first)
                    if route is None:  # a topic of an ordinary Faust agent: one event at a time
                        for record in kept:
                            message = to_message(tp, record)
                            await self.wait_first(self.callback(message), self.suspend_flow.wait())
                            read_offset[tp] = message.offset
                        continue
                    make = route.make_input
                    for at in range(0, len(kept), route.max_batch):
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break  # the rest is read again from the committed offsets
                        part = kept[at:at + route.max_batch]
                        fetched = FetchedBatch(tp, [
                            make(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp or None,
                                 list(r.headers) if r.headers else None) for r in part], generation)
                        self._track_batch(tp, fetched)
                        read_offset[tp] = part[-1].offset
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await self.wait_first(route.sink(tp, fetched), self.suspend_flow.wait())
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class _Transport(driver.Transport):
    Consumer = _Consumer


class StreamscoreApp(faust.App):
    """A Faust app whose consumer uses ``fetch_max_wait_ms`` instead of Faust's fixed 1500 ms, and can hand
    whole record batches of a topic to one sink (``batch_topic``)."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 500, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.batch_routes: dict[str, BatchRoute] = {}
        self.batch_drains: list[Callable[[], Awaitable[None]]] = []  # awaited by the consumer before its last commit
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)

    def batch_topic(self, topic: faust.types.TopicT, sink: BatchSink, make_input: InputFactory,
                    max_batch: int) -> None:
        """Subscribe ``topic`` and deliver its records to ``sink`` in ``FetchedBatch`` es of at most ``max_batch``
        inputs built by ``make_input``, each batch one partition's records from one fetch."""
        for name in topic.topics:
            self.batch_routes[name] = BatchRoute(sink, make_input, max_batch)
        self.topics.add(topic)
