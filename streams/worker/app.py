"""The Faust app of a streamscore worker: wiring only, each piece lives in its own module.

    input topics ──▶ [score agent | batch engine] ──▶ predictions
                              │
                              └──────────────────▶ dead-letter

The worker also serves /metrics (Prometheus), /healthz and /readyz on ``web_port``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
from contextlib import ExitStack

import faust
from confluent_kafka import KafkaException
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.onnx_scorer import OnnxScorer
from models.scorer import Scorer
from models.serving import hold_serving_lease
from streams import metrics
from streams.background import NOT_STARTED
from streams.engines.batch import BatchEngine
from streams.engines.faust_agent import ScoringAgent, register_scoring_agent
from streams.kafka import clients
from streams.kafka.broker import ensure_broker
from streams.kafka.faust_transport import StreamscoreApp
from streams.kafka.publisher import Publisher
from streams.kafka.topics import ensure_topics
from streams.logs import RATE_LIMITED, configure_logging, logging_config, summarise_root
from streams.routing.watcher import register_registry
from streams.scoring.pipeline import ScoringPipeline
from streams.scoring.registry import prediction_encoder, schema_resolver
from streams.scoring.tracing import configure_otlp
from streams.settings import Settings
from streams.worker.health import Health, ProgressWatch
from streams.worker.lag import register_lag_monitor
from streams.worker.outage import OutageWatch, OutageWatchService
from streams.worker.status_page import StatusPage, render, render_body, render_missing_report

log = logging.getLogger(__name__)


class Worker:
    """Holds the Faust app and the objects its agents share."""
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scorer = OnnxScorer.from_dir(settings.model_dir)
        # Schema Registry codecs (None unless STREAMSCORE_SCHEMA_REGISTRY_URL) and trace context of the outputs.
        self.pipeline = ScoringPipeline(settings.scoring, self.scorer, resolver=schema_resolver(settings),
                                        encoder=prediction_encoder(settings),
                                        tracing=configure_otlp(settings.otel_exporter_otlp_endpoint))
        self.publisher = Publisher(settings.kafka)
        self.started_at = time.time()
        # Faust's own consumer scores only with engine=faust. With the batch engine it reads nothing but Faust's
        # assignor topic, and on Tansu (which holds each fetch for the full wait) 10 ms fetches took 10 % of the
        # worker's samples under a backlog (py-spy), so it waits like the lanes beside scoring.
        faust_fetch_wait = settings.fetch_wait_ms if settings.engine == "faust" else settings.background_fetch_wait_ms
        self.app = StreamscoreApp(
            settings.app_id,
            fetch_max_wait_ms=faust_fetch_wait,
            broker=settings.faust_broker_url,
            broker_credentials=_faust_credentials(settings),
            store="memory://",
            datadir=str(settings.state_dir / "faust"),
            processing_guarantee="at_least_once",
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
            broker_rebalance_timeout=settings.session_timeout_ms / 1000,
            broker_commit_interval=settings.commit_interval_s,
            consumer_auto_offset_reset="earliest",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            web_port=settings.web_port,
            web_bind=settings.web_bind,
            web_in_thread=False,
            # broker_max_poll_records stays Faust's default (no limit): capping a getmany cut the faust worker's
            # peak RSS (100k backlog: 305-341 MB -> 177 at 1024, 256-278 at 4096) but its throughput with it
            # (ratio to the loop 0.45-0.71 -> 0.33-0.36 at 1024, 0.49-0.53 at 4096; alternated bench runs).
        )
        self.batch_engine: BatchEngine | None = None
        self.scoring_agent: ScoringAgent | None = None
        if settings.engine == "faust":
            self.scoring_agent = register_scoring_agent(self.app, settings.kafka, settings.scoring, self.pipeline,
                                                        self.publisher)
        else:
            self.batch_engine = BatchEngine(settings.kafka, settings.scoring, self.pipeline, self.publisher)
        # Capabilities beside scoring: each receives the collaborators it needs, never the Worker.
        app, features = self.app, self.scorer.feature_names
        group = self.batch_engine.group_id if self.batch_engine is not None else settings.app_id
        self.lag = register_lag_monitor(app, settings, group)  # lag gauge + broker reachability for /readyz
        self.learning = None
        if settings.learner:  # River learners fed by the labels topic
            from streams.learning.lane import register_learning  # heavy: river, pandas (~1 s, see below)

            self.learning = register_learning(app, settings, features)
        self.drift = self.archiver = None
        # Capabilities are imported only when on: the drift lane pulls scipy.stats (66 MB of RSS) and, at the first
        # label, River's detectors (7.5 MB: without scikit-learn, online_learning/river_import.py); learning river
        # and pandas; the archiver its child process. A scoring-only worker needs none of them.
        if settings.drift_window > 0:
            from streams.drift.lane import register_drift_monitor  # heavy: scipy.stats (see above)

            self.drift = register_drift_monitor(app, settings, self.scorer, self._served_champion,
                                                self.pipeline)
        else:
            log.info("drift monitoring off (STREAMSCORE_DRIFT_WINDOW=0)")
        if settings.archive:
            from streams.archive.service import register_archiver  # heavy: pyarrow (see above)

            self.archiver = register_archiver(app, settings)  # inputs + predictions into sealed, versioned segments
        else:
            log.info("archiving off (STREAMSCORE_ARCHIVE=false)")
        self.registry = register_registry(app, settings, self.pipeline, features)  # versions, routing, hot swap
        lag = self.lag
        self.outage = OutageWatch(lambda: lag.broker_reachable, settings.bootstrap_servers,
                                  answer_age_s=lambda: lag.last_answer_age_s)  # an outage's first and last line
        self.app.service(OutageWatchService(self.outage))
        self.health = self._health()
        self.app.service(_Lifecycle(self))
        self._register_pages()

    def _health(self) -> Health:
        """Every part that can die or stall, with a probe /healthz reads (see streams/worker/health.py)."""
        health = Health()
        lag = self.lag

        def owned_lag() -> int | None:
            if not lag.lags:
                return None
            owned = self._assigned_partitions()
            return sum(n for key, n in lag.lags.items() if owned is None or key in owned)

        health.add("scoring", ProgressWatch(_consumed_events, owned_lag, lambda: lag.broker_reachable,
                                            self.settings.stall_after_s, assigned=lambda: self.ready).probe)
        if self.batch_engine is not None:
            engine = self.batch_engine
            health.add("batch-engine", lambda: {"healthy": engine.alive, "alive": engine.alive} if engine.started
                       else {"healthy": False, "alive": False, "reason": NOT_STARTED})
        health.add("lag-monitor", lag.health)
        health.add("broker", self.outage.health)  # reachable or not: never failing (not the worker's fault)
        if self.drift is not None:
            health.add("drift-lane", self.drift.lane.health)
        if self.archiver is not None:
            health.add("archiver", self.archiver.health)
        if self.learning is not None:
            health.add("learner", self.learning.health)
        if self.registry is not None:
            health.add("registry-watcher", self.registry.watcher.health)
            health.add("routing-feedback", self.registry.feedback.health)  # bandit rewards stop without it
        return health

    def _assigned_partitions(self) -> set[tuple[str, int]] | None:
        """The partitions this worker scores (None: not known here, count every partition of the group)."""
        if self.batch_engine is not None or not self.app.started:
            return None
        return {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}

    def fail(self, part: str, times: int) -> str:
        """Fault tests (STREAMSCORE_DEBUG_ENDPOINTS): make ``part`` crash ``times`` times, from the inside."""
        lanes = {"lag-monitor": self.lag, "drift-lane": self.drift.lane if self.drift else None,
                 "registry-watcher": self.registry.watcher if self.registry else None,
                 "routing-feedback": self.registry.feedback if self.registry else None,
                 "faust-agent": self.scoring_agent}
        lane = lanes.get(part)
        if lane is not None:
            lane.inject_failures(times)
            return f"{part} will fail {times} time(s)"
        if part == "archiver" and self.archiver is not None:
            return self.archiver.kill()
        if part == "batch-engine" and self.batch_engine is not None:
            self.batch_engine.stopping.set()  # the thread exits as if it had died; nothing restarts it
            return "batch-engine thread stopped"
        known = ", ".join(sorted([*lanes, "archiver", "batch-engine"]))
        raise KeyError(f"no part {part!r} to fail here (known: {known})")

    def _served_champion(self) -> Scorer | None:
        """The default route's first arm (the champion) once the registry routes scoring, else None."""
        router = self.pipeline.router
        return router.table.default.scorers[0] if router is not None else None

    @property
    def ready(self) -> bool:
        if self.batch_engine is not None:
            return self.batch_engine.assigned.is_set()
        return bool(self.app.consumer.assignment()) if self.app.started else False

    def _register_pages(self) -> None:
        app, worker = self.app, self
        status_page = StatusPage()  # keeps the counter samples the page's rates are computed from

        @app.page("/")  # added before Faust's blueprints (init_server): it answers / instead of their {"status": "OK"}
        async def status_html(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            status = status_page.status(worker)  # ?fragment=1: the live part only, for the page's 2 s refresh
            return web.html(render_body(status) if request.query.get("fragment") else render(status))

        @app.page("/status.json")
        async def status_json(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            return web.json(status_page.status(worker))

        @app.page("/drift/report")
        async def drift_report(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            records = list(worker.drift.monitor.recent) if worker.drift is not None else []
            if not records:
                return web.html(render_missing_report(worker.drift is not None, worker.settings.drift_window),
                                status=404)
            from streams.drift.report import render_report  # heavy, and only with drift on (see Worker.__init__)

            page = await app.loop.run_in_executor(None, render_report, records)  # 120 records took 34 ms: off the loop
            return web.html(page)

        @app.page("/metrics")
        async def metrics(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @app.page("/healthz")
        async def healthz(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            report = worker.health.report()
            body = {**report, "uptime_s": round(time.time() - worker.started_at, 1), "pid": os.getpid(),
                    "worker": worker.settings.worker_name}
            return web.json(body, status=200 if report["status"] == "ok" else 503)

        if worker.settings.debug_endpoints:
            @app.page("/debug/fail")
            async def debug_fail(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
                part, times = request.query.get("part", ""), int(request.query.get("times", "1"))
                try:
                    return web.json({"ok": True, "detail": worker.fail(part, times)})
                except KeyError as exc:
                    return web.json({"ok": False, "detail": exc.args[0]}, status=404)

        @app.page("/readyz")
        async def readyz(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            assigned, broker = worker.ready, worker.lag.broker_reachable  # both cached: no I/O per probe
            scoring = worker.health.report()
            routing_ok = worker.registry is None or (worker.registry.healthy and worker.registry.watcher.alive)
            body = {
                "ready": assigned and broker and scoring["status"] == "ok" and routing_ok,
                "healthy": scoring["status"] == "ok",
                "registry_applied": routing_ok,
                "partitions_assigned": assigned,
                "broker_reachable": broker,
                "broker_answered_s_ago": worker.lag.last_answer_age_s,
                "engine": worker.settings.engine,
                "model": f"{worker.scorer.name}@{worker.scorer.version}",
                "pid": os.getpid(),  # lets a launcher tell its own child from another worker on the port
                "worker": worker.settings.worker_name,
            }
            return web.json(body, status=200 if body["ready"] else 503)


class _Lifecycle(Service):
    """Starts the batch engine with the worker; on stop, flushes outputs before Faust's final commit."""
    def __init__(self, worker: Worker, **kwargs: object) -> None:
        self.worker = worker
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        scorer = self.worker.scorer  # logged here: Faust configures logging only once the worker starts
        log.info("scoring with %s@%s sha256=%s (engine %s)", scorer.name, scorer.version, scorer.sha256[:12],
                 self.worker.settings.engine)
        if self.worker.batch_engine is not None:
            self.worker.batch_engine.start()

    async def on_stop(self) -> None:
        if self.worker.batch_engine is not None:
            await self.loop.run_in_executor(None, self.worker.batch_engine.stop)
        await self.loop.run_in_executor(None, self.worker.publisher.close)


def _consumed_events() -> float:
    """Inputs the pipeline has consumed so far (any topic), read from its own counter."""
    return sum(s.value for family in metrics.EVENTS_IN.collect() for s in family.samples if s.name.endswith("_total"))


def _faust_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """SASL/SSL for aiokafka (the Faust transport), mirroring ``Settings.kafka_client_config``."""
    import ssl

    proto = settings.security_protocol
    if proto == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if proto == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        mechanism=settings.sasl_mechanism or "PLAIN",
        ssl_context=context if proto == "SASL_SSL" else None,
    )


class WorkerStartError(RuntimeError):
    """The worker cannot start as configured; ``str()`` is one line for the user."""


def check_web_port(settings: Settings) -> None:
    """Raise ``WorkerStartError`` if the web port cannot be bound (checked before Faust starts)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does: TIME_WAIT is fine
        try:
            sock.bind(("0.0.0.0", settings.web_port))
        except OSError as exc:
            raise _port_error(settings.web_port, exc) from None


def _port_error(port: int, exc: OSError) -> WorkerStartError:
    if exc.errno == errno.EADDRINUSE:
        return WorkerStartError(f"port {port} is in use (another worker?); set STREAMSCORE_WEB_PORT or --web-port")
    return WorkerStartError(f"cannot listen on port {port} ({exc.strerror or exc}); "
                            "set STREAMSCORE_WEB_PORT or --web-port")


class _FaustWorker(faust.Worker):
    """Keeps a failed bind of the web port (lost to a race after ``check_web_port``) as a one-line error."""
    bind_error: OSError | None = None

    async def start(self) -> None:
        try:
            await super().start()
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            self.bind_error = exc  # mode would log a 60-line traceback and exit 1

    def _setup_logging(self) -> None:
        super()._setup_logging()
        summarise_root()  # mode replaced the root handlers: repeated lines summarised on its handlers too


def _wait_for_broker(settings: Settings, retry_s: float = 5.0, log_every_s: float | None = None) -> None:
    """Create the flow's topics, waiting for the broker as long as it takes, not a crash (a worker started before its
    Kafka cluster, or during an outage, starts once the cluster answers): a try every ``retry_s``, one log line per
    ``log_every_s`` (``log_repeat_interval_s``) with the attempts so far, and one when the broker answers."""
    log_every_s = settings.log_repeat_interval_s if log_every_s is None else log_every_s
    waited_since: float | None = None
    logged_at, attempts = float("-inf"), 0
    while True:
        started = time.monotonic()
        try:
            ensure_topics(settings, timeout=retry_s)  # a dead address answers after the timeout, a refused one at once
        except KafkaException as exc:
            attempts += 1
            waited_since = waited_since or started
            if started - logged_at >= log_every_s:
                logged_at = started
                log.warning("broker %s not reachable (%s); trying every %.1f s (%d attempt(s), %.0f s so far); %s",
                            settings.bootstrap_servers, _first_line(exc), retry_s, attempts,
                            time.monotonic() - waited_since, _broker_hint(settings),
                            extra={"summary_kind": RATE_LIMITED})
            time.sleep(max(0.0, retry_s - (time.monotonic() - started)))
            continue
        if waited_since is not None:
            log.warning("broker %s answered after %.0f s (%d failed attempt(s)); starting", settings.bootstrap_servers,
                        time.monotonic() - waited_since, attempts)
        return


def _broker_hint(settings: Settings) -> str:
    if settings.is_embedded:
        return "`streamscore broker up` starts the embedded broker"
    return f"is it running? STREAMSCORE_BROKER={settings.broker} names it"


def _first_line(exc: BaseException) -> str:
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)  # KafkaError: its text, not its repr
    return text.splitlines()[0] if text else type(exc).__name__


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM (which stop it gracefully).

    Raises ``WorkerStartError`` if the web port is taken. While it runs, the worker holds a serving
    lease on its model folder (models.serving), so ``train-demo`` refuses to overwrite the model.
    """

    check_web_port(settings)
    level = {"crit": "CRITICAL", "warn": "WARNING"}.get(loglevel.lower(), loglevel.upper())
    configure_logging(settings.log_format, level, settings.log_repeat_interval_s)  # until Faust's: the broker wait
    clients.quiet(settings.log_repeat_interval_s)  # librdkafka's log summarised too (the CLI called it already)
    ensure_broker(settings)
    _wait_for_broker(settings)
    with ExitStack() as stack:
        try:
            stack.enter_context(hold_serving_lease(settings.model_dir))
        except OSError as exc:  # a read-only mount (docker-compose mounts the model volume :ro): nobody here writes it
            log.warning("no serving lease on %s (%s); trainers can only be stopped by its permissions",
                        settings.model_dir, exc.strerror or exc)
        worker = Worker(settings)
        # Faust configures logging as it starts: STREAMSCORE_LOG_FORMAT=json goes in as its dictConfig
        runner = _FaustWorker(worker.app, loglevel=loglevel, quiet=True,
                              logging_config=logging_config(settings.log_format, loglevel))
        if not sys.stdout.isatty():
            runner.spinner = None  # it writes cursor escapes even into a log file (the demo's, a test's)
        try:
            runner.execute_from_commandline()
        except SystemExit:
            if runner.bind_error is None:
                raise
        if runner.bind_error is not None:
            raise _port_error(settings.web_port, runner.bind_error)
