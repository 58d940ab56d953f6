"""Faust's aiokafka transport: a configurable fetch wait, and whole record batches for batch agents.

Fetch wait: Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Apache Kafka answers a fetch
as soon as data arrives, so the value only matters when a topic is idle; Tansu (the embedded broker)
holds every fetch for the full wait, which measured p50 ≈ 500 ms from produce to consume at 1500 ms,
≈ 105 ms at 500 ms and ≈ 3 ms at 5 ms. ``StreamscoreApp`` sets it from ``Settings.fetch_max_wait_ms``.

Batches: Faust hands every record to the conductor on its own (``Consumer._drain_messages`` runs
``wait_first(callback(message), ...)``, two tasks per event, then topic queue → stream → event), which caps
an agent that does nothing near 15k events/s on the 2-core dev box. A topic registered with
``StreamscoreApp.batch_topic`` skips all of that: the fetcher passes each partition's records from one
``getmany`` to the topic's sink as one list of ``ConsumerMessage`` s. Everything that keeps Faust's
at-least-once bookkeeping is kept: every message is tracked (as ``track_message`` does, once per batch) before
the sink sees it, the
sink acks it through ``Consumer.ack`` once its outputs are delivered, the commit handler commits acked
offsets, rebalances wait for unacked messages (``wait_empty``) and the generation id is checked per batch.

Two guards Faust lacks: ``_new_offset`` commits only a run of acked offsets that starts exactly where the
partition was read from (Faust skips that check while nothing is committed yet, so acks after a lost batch
could commit past it), and ``rewind`` lets an agent that dropped a batch (crash, failed delivery) forget it
and read again from the committed offsets, so shutdown and rebalances do not wait forever for its acks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from weakref import ref

import faust
from faust.sensors.monitor import Monitor
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

BatchSink = Callable[[TP, list[Message]], Awaitable[None]]


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
        if self.app.batch_sinks and not self.should_stop and self.assignment():
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
        if self.app.batch_sinks:
            for drain in self.app.batch_drains:
                await drain()
            self._unacked_messages.clear()
        await super().wait_empty()

    def _track_batch(self, tp: TP, messages: list[Message]) -> None:
        """``track_message`` for a whole batch: pending ack (``_unacked_messages``, a WeakSet) and the sensors.

        ``track_message`` per message was 17 % of the GIL-held time of a Faust worker under a backlog (py-spy
        --gil): a WeakSet add and a call into every sensor per event. Here the weak references are added in one
        ``update`` of the WeakSet's own set, and Faust's ``Monitor`` (the only sensor unless an app adds some) gets
        its counters once per batch; any other sensor is still called per message, as Faust does."""
        unacked = self._unacked_messages
        remove = unacked._remove
        unacked.data.update([ref(message, remove) for message in messages])
        last = messages[-1]
        for sensor in self.app.sensors:
            if type(sensor).on_message_in is Monitor.on_message_in:
                # Monitor.on_message_in's bookkeeping, n events at once (message.time_in is read only by
                # on_message_out, which the batch path never calls: inputs are acked through Consumer.ack)
                sensor.messages_received_total += len(messages)
                sensor.messages_active += len(messages)
                sensor.messages_received_by_topic[tp.topic] += len(messages)
                sensor.tp_read_offsets[tp] = last.offset
            else:
                for message in messages:
                    sensor.on_message_in(tp, message.offset, message)

    def ack_batch(self, messages: list[Message]) -> None:
        """``Consumer.ack`` for a batch of one partition's messages, its bookkeeping done once for the batch: per
        message it took the ack lock, looked the topic and the partition up and discarded a weak reference on the
        event loop's thread (measured on batches of 2048: 2.1 -> 0.5 us per message)."""
        if not messages:
            return
        first = messages[0]
        with ack_lock:  # as Consumer.ack: the acked flags and the offset bookkeeping change in one step
            fresh = [m for m in messages if not m.acked]
            for message in fresh:
                message.acked = True
            if not fresh or not self.app.topics.acks_enabled_for(first.topic):
                return
            tp = first.tp
            committed, acked_index = self._committed_offset[tp], self._acked_index[tp]
            fresh = [m for m in fresh if (committed is None or m.offset >= committed) and m.offset not in acked_index]
            if not fresh:
                return
            offsets = [m.offset for m in fresh]
            self._unacked_messages.difference_update(fresh)
            acked_index.update(offsets)
            self._acked[tp].extend(offsets)
            self._n_acked += len(offsets)
            notify(self._waiting_for_ack)

    def release(self, messages: Iterable[Message]) -> None:
        """Forget tracked messages that will never be acked (their batch was dropped): nothing waits for them."""
        self._unacked_messages.difference_update(messages)

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
        sinks: dict[str, BatchSink] = self.app.batch_sinks
        if not sinks:
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
                    sink = sinks.get(tp.topic)
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    last = read_offset[tp]
                    messages = []
                    for record in batch:
                        offset = record.offset
                        if last is not None and offset < last:
                            continue  # read before (a seek back races the fetch): Faust drops these too
                        if last is not None and offset - last > 1:  # compaction / transaction markers
                            await self._add_gap(tp, last + 1, offset)
                        messages.append(to_message(tp, record))
                        last = offset
                    if not messages:
                        continue
                    first = messages[0].offset
                    read_from.setdefault(tp, first)
                    if tp not in self._seen:  # the first read after a seek to the committed offset
                        self._seen.add(tp)
                        committed = self._committed_offset[tp]
                        if committed is not None and first > committed:  # records gone (retention, compaction)
                            self._gap[tp].addi(committed, first)
                    if sink is None:  # a topic of an ordinary Faust agent: one event at a time
                        for message in messages:
                            await self.wait_first(self.callback(message), self.suspend_flow.wait())
                            read_offset[tp] = message.offset
                        continue
                    self._track_batch(tp, messages)
                    read_offset[tp] = last
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await self.wait_first(sink(tp, messages), self.suspend_flow.wait())
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
        self.batch_sinks: dict[str, BatchSink] = {}
        self.batch_drains: list[Callable[[], Awaitable[None]]] = []  # awaited by the consumer before its last commit
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)

    def batch_topic(self, topic: faust.types.TopicT, sink: BatchSink) -> None:
        """Subscribe ``topic`` and deliver its records to ``sink`` one fetched partition batch at a time."""
        for name in topic.topics:
            self.batch_sinks[name] = sink
        self.topics.add(topic)
