"""The archiver beside scoring: every input record and every prediction into sealed, immutable segments.

    input topics + predictions ──▶ [archive lane, group <app_id>-archive] ──▶ datastore.archive.Archive
                                                                                  │ seal (size / age / stop)
                                  commit offsets of sealed records only ◀─────────┘

Its own consumer group, like the drift lane (streams/drift/lane.py): archiving must not share the scoring
group's commits, and it runs the same under both engines. A confluent-kafka consumer on a thread; by
default (``STREAMSCORE_ARCHIVE_MODE=process``) the worker runs that thread in a child process
(``python -m streams.archive.lane``) that it supervises: fastavro encoding every record costs as much
Python as scoring it, and inside the worker it held the GIL against scoring (faust engine 6.5 s → 11.2 s
for a 50k backlog, measured; docs/data_versioning.md). ``thread`` keeps it in the worker process. The Faust
services that run it (``streams/archive/service.py``) are not imported here, so the child loads no Faust, mode
or aiohttp (its import RSS 65 → 52 MB; docs/side-lanes-cost.md).

Delivery: ``enable.auto.commit`` is off and an offset is committed only once every record below it is in
a sealed segment (file fsynced, published atomically, manifest written). A ``kill -9`` therefore loses only
unsealed, uncommitted records, which the group reads again after the restart; records sealed but not yet
committed are recognised by their offsets and not written twice (``Archive.add``). Every worker runs
one; they share ``data_dir`` (same host or a shared volume), each writing the partitions it is assigned.

>>> from streams.settings import Settings
>>> s = Settings(input_topics={"features": "json", "features-avro": "avro"}, prediction_topic="predictions")
>>> {t: (spec.kind, spec.wire_format) for t, spec in archive_topics(s).items()}
{'features': ('event', 'json'), 'features-avro': ('event', 'avro'), 'predictions': ('prediction', 'json')}
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from datastore.archive import Archive, TopicSpec
from datastore.canonical import SourceRecord
from datastore.catalog import recover
from datastore.epochs import Epoch
from datastore.manifest import SegmentManifest
from datastore.retention import apply_retention, compact
from datastore.storage import Storage, open_storage
from streams.background import BackgroundThread
from streams.kafka import clients
from streams.logs import configure_logging
from streams.settings import Settings

log = logging.getLogger(__name__)

# librdkafka looks at the subscribed topics' metadata every 5 min by default. A topic deleted and re-created on
# Tansu usually crashed this process (docs/data_versioning.md), and the restarted child saw the new incarnation;
# when it did not crash (1 clean-clone CI run in 3 on a loaded box), it read nothing of the new incarnation for
# the test's 120 s. Looking every 5 s bounds that wait.
METADATA_REFRESH_MS = 5000

ARCHIVED = Counter("streamscore_archive_records_total", "Records written to archive segments", ["topic"])
SKIPPED = Counter("streamscore_archive_records_skipped_total", "Records consumed again that the archive already "
                  "holds (same epoch, same bytes): acknowledged, not written twice", ["topic"])
EPOCHS = Counter("streamscore_archive_epochs_total", "New incarnations (epochs) of a topic partition started, by "
                 "what revealed them (datastore.epochs)", ["topic", "reason"])
SEALED = Counter("streamscore_archive_segments_sealed_total", "Segments sealed, by reason", ["reason"])
SEALED_BYTES = Counter("streamscore_archive_sealed_bytes_total", "Bytes of sealed segment files")
OPEN = Gauge("streamscore_archive_open_records", "Records in unsealed segments (consumed, not yet committed)")

Position = tuple[str, int, int]  # the token the Archive hands back: (topic, partition, offset)


def archive_topics(settings: Settings) -> dict[str, TopicSpec]:
    """What the archiver reads: every input topic (decoded with its wire format), the prediction topic, and the
    labels topic when an online learner is configured."""
    topics = {t: TopicSpec("event", fmt) for t, fmt in settings.input_topics.items()}
    topics[settings.prediction_topic] = TopicSpec("prediction", "json")
    if settings.learner is not None:  # what River snapshots learn from (lineage: streams/archive/lineage.py)
        topics[settings.labels_topic] = TopicSpec("label", "json")
    return topics


def topic_ids(admin: AdminClient, topics: list[str], timeout: float = 3.0) -> dict[str, str]:
    """The broker's Kafka topic id of each topic it describes (DescribeTopics); topics it cannot describe are left
    out, so the archive falls back on comparing records (an older broker, a missing Describe ACL, a timeout).

    Tansu answers with a topic id, and a new one when a topic is deleted and created again (measured).
    """
    if not topics:
        return {}
    try:
        futures = admin.describe_topics(TopicCollection(sorted(topics)), request_timeout=timeout)
    except KafkaException as exc:
        log.warning("archive lane: topic ids not available (%s); incarnations are told by their records", exc)
        return {}
    found = {}
    for topic, future in futures.items():
        try:
            found[topic] = str(future.result(timeout=timeout).topic_id)
        except (KafkaException, TimeoutError) as exc:  # confluent-kafka raises either when the broker does not answer
            log.warning("archive lane: no topic id for %s (%s)", topic, exc)
    return found


def to_source(m: Message) -> SourceRecord:
    ts_type, ts = m.timestamp()
    headers = [(k, v) for k, v in (m.headers() or [])]
    return SourceRecord(m.topic(), m.partition(), m.offset(), ts if ts_type != 0 else None, m.key(), m.value(),
                        headers)


class ArchiveLane(BackgroundThread):
    """Consumes into an ``Archive`` on its own thread and commits what is sealed (see the module docstring)."""
    poll_records = 1000
    thread_name = "archive-lane"
    stop_timeout_s = 30.0  # sealing the open segments on the way out takes a moment

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self.group_id = f"{settings.app_id}-archive"
        self.topics = archive_topics(settings)
        self.archive: Archive[Position] = Archive(
            storage, self.topics, settings.archive_segment_records, settings.archive_segment_seconds,
            codec=settings.archive_codec, writer=f"{settings.app_id}-{settings.worker_name}",
            max_payload_bytes=settings.max_payload_bytes, on_sealed=self._sealed, on_new_epoch=self._new_epoch)
        self.assigned = threading.Event()
        self.committed: dict[tuple[str, int], int] = {}  # next offset committed per partition
        self._ready: dict[tuple[str, int], int] = {}  # next offset that may be committed
        self._last_commit = time.monotonic()
        self._admin: AdminClient | None = None  # for topic ids, created with the consumer
        for topic in self.topics:  # every series from the start: "0 skipped" is shown, not absent
            ARCHIVED.labels(topic)
            SKIPPED.labels(topic)
        self.error: BaseException | None = None
        super().__init__()

    def _target(self) -> None:
        self._run_guarded()

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # surfaced on /archive and in the log; the worker keeps scoring
            self.error = exc
            log.exception("archive lane stopped")

    def run(self) -> None:
        # librdkafka prefetches up to queued.max.messages.kbytes (64 MB by default) in fetches of up to 50 MB while
        # the lane is behind, which it is while a backlog is scored: a consumer reading a 100k-record backlog
        # slowly peaked at +58-68 MB RSS with the defaults, +27 MB with 4 MB / 4 MB, which still read it at
        # ~60k records/s (the lane writes ~20-30k/s); 1 MB fetches throttled it to ~9k/s (measured, Tansu).
        consumer = clients.consumer(self.settings.kafka, self.group_id, background=True,
                                    **{"queued.max.messages.kbytes": 4096, "fetch.max.bytes": 4 * 1024 * 1024,
                                       "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS})
        self._admin = clients.admin(self.settings.kafka)
        consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stopping.is_set():
                self.beat()
                messages = clients.records(consumer, self.poll_records, 0.1, where="archive lane")
                items = [(to_source(m), (m.topic(), m.partition(), m.offset())) for m in messages]
                if items:
                    self._ackable(self.archive.add(items))
                    self._count()
                self._ackable(self.archive.seal_due())
                OPEN.set(self.archive.open_records)
                self._commit(consumer)
        finally:
            # Graceful stop: seal what is open so it is committed now, not consumed and written again.
            self._ackable(self.archive.seal_all("flush"))
            self._commit(consumer, force=True)
            consumer.close()
            self.archive.close()
            OPEN.set(0)

    def _count(self) -> None:
        # Written and skipped apart: a consumed record the archive already holds is not archived again, and when
        # it was counted as archived, 10 re-created-topic records that were skipped showed as archived.
        for (topic, outcome), n in self.archive.drain_counts().items():
            (ARCHIVED if outcome == "written" else SKIPPED).labels(topic).inc(n)

    def _new_epoch(self, epoch: Epoch) -> None:
        """A new incarnation of a partition: its offsets start again, so what was committed or ready for the old
        one would hold commits back (``_commit`` only moves forward) until the new one passed the old offsets."""
        tp = (epoch.topic, epoch.partition)
        old_committed, old_ready = self.committed.pop(tp, None), self._ready.pop(tp, None)
        EPOCHS.labels(epoch.topic, epoch.reason).inc()
        log.warning("archive lane: %s[%d] is a new incarnation: epoch %d (%s; %s); commits restart from its offsets "
                    "(old incarnation: committed %s, ready %s)", epoch.topic, epoch.partition, epoch.epoch,
                    epoch.reason, epoch.evidence or "-", old_committed, old_ready)

    def _ackable(self, positions: list[Position]) -> None:
        for topic, partition, offset in positions:
            tp = (topic, partition)
            if offset + 1 > self._ready.get(tp, -1):
                self._ready[tp] = offset + 1

    def _commit(self, consumer: Consumer, force: bool = False) -> None:
        due = force or time.monotonic() - self._last_commit >= self.settings.commit_interval_s
        if not due:
            return
        offsets = []
        for (topic, partition), nxt in self._ready.items():
            # Never commit past the first record of an unsealed segment of the same partition.
            first_open = self.archive.open_first_offset(topic, partition)
            if first_open is not None:
                nxt = min(nxt, first_open)
            if nxt > self.committed.get((topic, partition), -1):
                offsets.append(TopicPartition(topic, partition, nxt))
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=not force)
            except KafkaException as exc:
                # e.g. "Waiting for coordinator" in a broker outage: it used to end the lane (and the archiver
                # child, restarted 2 s later) in every outage. Nothing is lost: the offsets go with the next
                # commit, or whoever owns the partitions next reads those records again (at-least-once, as after
                # a crash).
                log.warning("archive lane: commit refused (%s); offsets kept for the next commit", exc)
                return
            for o in offsets:
                self.committed[(o.topic, o.partition)] = o.offset
        self._last_commit = time.monotonic()

    def _sealed(self, manifest: SegmentManifest) -> None:
        SEALED.labels(manifest.sealed_by).inc()
        SEALED_BYTES.inc(manifest.bytes)
        log.debug("sealed %s (%d records, %s)", manifest.key, manifest.record_count, manifest.sealed_by)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("archive lane assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        # Runs on the lane thread (inside consume): the Archive is not shared with another thread.
        ids = topic_ids(self._admin, sorted({p.topic for p in partitions})) if self._admin is not None else {}
        reborn = []
        for p in partitions:
            before = self.archive.epoch_of(p.topic, p.partition)
            if self.archive.check_incarnation(p.topic, p.partition, [], topic_id=ids.get(p.topic)).epoch != before:
                # A new incarnation: the group's committed offset may be the old one's (a commit that landed after
                # the topic was re-created; Tansu then serves nothing below it, so 180 new records sat unread).
                # Read it from its start; what this epoch already holds is skipped, not written twice.
                p.offset = OFFSET_BEGINNING
                reborn.append(f"{p.topic}[{p.partition}]")
        if reborn:
            log.warning("archive lane: reading %s from the beginning (new incarnation)", ", ".join(reborn))
            consumer.assign(partitions)
        self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Seal and commit what we hold before another member takes these partitions over.
        self._ackable(self.archive.seal_all("flush"))
        self._commit(consumer, force=True)
        log.info("archive lane revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])


def housekeeping(storage: Storage, s: Settings) -> None:
    """Retention, then compaction, as configured (each takes the store lock)."""
    if s.data_retention_max_age_s is not None or s.data_retention_max_bytes is not None:
        r = apply_retention(storage, s.data_retention_max_age_s, s.data_retention_max_bytes)
        if r.deleted:
            log.info("retention deleted %d segments (%d bytes)", len(r.deleted), r.deleted_bytes)
    if s.archive_compact_below_records is not None:
        c = compact(storage, s.archive_compact_below_records, s.archive_segment_records)
        if c.merged:
            log.info("compaction merged %d segments into %d", len(c.replaced), len(c.merged))


def run_archiver(settings: Settings) -> int:
    """Run the archive lane in the foreground until SIGTERM/SIGINT; seal and commit on the way out.

    The body of ``python -m streams.archive.lane`` (the worker's child) and ``streamscore data archiver``.
    """
    storage = open_storage(settings.data_path, settings.data_store_url)
    recover(storage)
    lane = ArchiveLane(settings, storage)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: lane.stopping.set())
    log.info("archiving %s into %s (group %s)", ", ".join(archive_topics(settings)), settings.data_path,
             lane.group_id)
    lane._run_guarded()  # returns once stopping is set, after sealing and committing (or on an error)
    log.info("archiver stopped: %s", lane.archive.stats)
    return 1 if lane.error is not None else 0


class ChildMetrics(Collector):
    """Exports the archiver child's ``streamscore_archive_*`` families through the worker's registry, in place of
    the worker's own copies of them.

    Both processes import this module, so both define these metrics, and in the worker (process mode) they never
    leave 0. Exported beside the child's, every archive family was listed twice: ``promtool check metrics``
    rejected the page and a real Prometheus kept the first, dead copy (sealed bytes 0 instead of ~1 MB). So while
    the child is supervised the worker's copies are unregistered (``install``) and each family appears once, with
    the child's values; ``describe`` gives the registry their names, so a second copy can no longer be registered.
    The child serves them on 127.0.0.1 only; a scrape of the worker reads them (1 s timeout), so Prometheus keeps
    one target per worker. While the child is down its series are absent, as a restarted process's would be.
    """

    def __init__(self, port: int, replaces: tuple[Counter | Gauge, ...] | None = None) -> None:
        self.port = port
        self.replaces = replaces if replaces is not None else (ARCHIVED, SKIPPED, EPOCHS, SEALED, SEALED_BYTES, OPEN)
        # family names as the parser gives them back (a counter's without ``_total``), so the child's own
        # process_*/python_* families are never forwarded over the worker's
        self.names = {family.name for m in self.replaces for family in m.describe()}

    def describe(self) -> Iterator[Metric]:
        for m in self.replaces:
            yield from m.describe()

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1) as resp:
                text = resp.read().decode()
        except OSError:
            return
        for family in text_string_to_metric_families(text):
            if family.name in self.names:
                yield family

    def install(self, registry: CollectorRegistry = REGISTRY) -> None:
        for m in self.replaces:
            registry.unregister(m)
        registry.register(self)

    def uninstall(self, registry: CollectorRegistry = REGISTRY) -> None:
        registry.unregister(self)
        for m in self.replaces:
            registry.register(m)


if __name__ == "__main__":  # the worker's archiver child process (ArchiverProcess)
    parser = argparse.ArgumentParser(prog="python -m streams.archive.lane", description="The worker's archiver "
                                     "child process (settings from STREAMSCORE_*); see `streamscore data archiver`.")
    parser.add_argument("--metrics-port", type=int, help="Serve this process's metrics on 127.0.0.1:PORT.")
    args = parser.parse_args()
    child_settings = Settings()
    # the worker's format (text or JSON) and --loglevel (handed down in STREAMS_LOGLEVEL), on the worker's stdout
    configure_logging(child_settings.log_format, os.environ.get("STREAMS_LOGLEVEL", "INFO").upper(),
                      child_settings.log_repeat_interval_s)
    clients.quiet()  # librdkafka's log summarised: it wrote 640 FAIL lines to stderr in a 50 s outage
    if args.metrics_port:
        disable_created_metrics()  # as the worker does (streams/metrics.py): no *_created series to forward
        start_http_server(args.metrics_port, addr="127.0.0.1")
    raise SystemExit(run_archiver(child_settings))
