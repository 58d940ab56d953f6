"""Runtime settings, overridable from the environment (prefix ``STREAMSCORE_``).

Every knob lives here so that the same code runs against the embedded broker on a laptop and
against a real Apache Kafka cluster in production: only the environment changes.

>>> s = Settings(broker="kafka://kafka-0:9092,kafka-1:9092")
>>> s.bootstrap_servers
'kafka-0:9092,kafka-1:9092'
>>> Settings().is_embedded
True
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.signing import resolve_key
from schemas.drift_thresholds import DriftThresholds
from schemas.routes import RouteSpec

InputFormat = Literal["json", "avro", "auto"]

# Settings that are never printed, dumped or logged (repr=False, exclude=True); as_env() hands them on.
SECRET_FIELDS = ("sasl_password", "signing_key", "snapshot_hmac_key", "schema_registry_basic_auth")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMSCORE_", env_nested_delimiter="__", extra="ignore")

    # --- broker -------------------------------------------------------------------------------
    broker: str = Field(
        "embedded",
        description="'embedded' (Tansu on 127.0.0.1, started by `streamscore broker up`) "
        "or kafka://host:port[,host:port] for a real cluster.",
    )
    embedded_port: int = Field(29092, description="Port of the embedded broker on 127.0.0.1.")
    state_dir: Path = Field(Path(".streamscore"), description="Pid files, logs and local state.")
    partitions: int = Field(4, ge=1, description="Partitions for topics the project creates.")
    replication_factor: int = Field(1, ge=1)

    # Tansu completes a group join after about half the session timeout (measured: 45 s default
    # -> ~23 s, 6 s -> ~3 s, 2 s -> ~1.1 s), so a short session timeout keeps joins fast.
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(500, ge=100)
    fetch_max_wait_ms: int | None = Field(
        None, ge=1,
        description="Longest a consumer fetch waits for data. Tansu holds every fetch this long even when "
        "data arrives (Kafka answers at once), so the default is 10 ms on the embedded broker, 500 on Kafka.",
    )
    idempotent_producer: bool | None = Field(
        None,
        description="librdkafka enable.idempotence. Default: on for Kafka; off on the embedded broker, where "
        "each idempotent produce took 100-500 ms to acknowledge (20 ms plain).",
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often acked offsets are committed.")

    # Security for a real cluster (passed straight to the Kafka clients; never logged).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects (librdkafka and aiokafka alike)."
    )
    sasl_mechanism: str | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; PLAIN when unset under a SASL_* protocol."
    )
    sasl_username: str | None = Field(None, description="SASL user (SASL_* protocols only).")
    # Out of repr/str and of model_dump() (what ends up in logs); as_env() hands it on explicitly.
    sasl_password: str | None = Field(
        None, repr=False, exclude=True, description="SASL password; never printed. Prefer sasl_password_file."
    )
    sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (a mounted k8s/docker secret), instead of sasl_password."
    )
    ssl_cafile: Path | None = Field(
        None, description="CA bundle to verify the brokers (SSL, SASL_SSL); the system CAs when unset."
    )

    # --- topics ------------------------------------------------------------------------------
    input_topics: dict[str, InputFormat] = Field(
        default_factory=lambda: {"features": "json", "features-avro": "avro"},
        description="Input topic -> wire format. JSON overrides: "
        'STREAMSCORE_INPUT_TOPICS=\'{"features": "auto"}\'.',
    )
    prediction_topic: str = "predictions"
    dead_letter_topic: str = "dead-letter"

    # --- Confluent Schema Registry (docs/operations.md, "Schema Registry") -------------------------------
    schema_registry_url: str | None = Field(
        None, description="http(s)://host:port[,http(s)://host:port] of a Confluent Schema Registry. Set: Avro schema "
        "ids are the registry's (input decoded by the id's registered schema, cached). Unset: the fixed local table "
        "(feature_event is id 1).",
    )
    schema_registry_subject_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic", description="Subject of the schemas we register: topic = <topic>-value, record = the record's full "
        "name (streamscore.Prediction), topic_record = <topic>-<record name>.",
    )
    schema_registry_auto_register: bool = Field(
        True, description="Register our schemas under their subject (POST /subjects/{s}/versions); false: only look "
        "them up (POST /subjects/{s}), for registries where this service may not register.",
    )
    schema_registry_basic_auth: str | None = Field(
        None, repr=False, exclude=True, description="USER:PASSWORD for the registry (Confluent Cloud: API key and "
        "secret); never printed. Prefer schema_registry_basic_auth_file.",
    )
    schema_registry_basic_auth_file: Path | None = Field(
        None, description="File holding USER:PASSWORD for the registry (a mounted secret).",
    )
    schema_registry_ca_file: Path | None = Field(
        None, description="CA bundle to verify an https registry; default the certifi bundle.",
    )
    avro_predictions: bool = Field(
        False, description="Write predictions as Confluent Avro (schemas/prediction.avsc, registered in the Schema "
        "Registry) instead of JSON. Needs schema_registry_url.",
    )

    # --- tracing (docs/operations.md, "Tracing") ----------------------------------------------------------
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces). Set: a span per "
        "sampled traced event is recorded and exported (needs the otel extra); unset: outputs still carry a child "
        "traceparent, nothing is recorded.",
    )

    # --- worker ------------------------------------------------------------------------------
    app_id: str = Field("streamscore", description="Faust app id = consumer group id.")
    engine: Literal["faust", "batch"] = Field(
        "faust",
        description="'faust': a Faust agent reading micro-batches with stream.noack_take(); "
        "'batch': a confluent-kafka batch engine "
        "hosted by the same worker, for throughput beyond Faust's per-event overhead.",
    )
    batch_size: int = Field(256, ge=1, description="Max events per scoring micro-batch.")
    batch_within_ms: float = Field(5.0, gt=0, description="Max wait to fill a micro-batch.")
    max_payload_bytes: int = Field(64 * 1024, ge=64, description="Larger payloads are dead-lettered.")
    worker_id: str | None = Field(None, description="Names this worker in dead letters and metrics.")
    web_port: int = Field(6066, description="HTTP port of the worker (status page, metrics, health).")
    web_bind: str = Field(
        "0.0.0.0", min_length=1, description="Address the worker's HTTP server listens on. 0.0.0.0 (every "
        "interface) is what containers need: probes and Prometheus reach the pod from outside. 127.0.0.1 keeps the "
        "status page, /metrics and /debug/fail on this host only (a laptop, a shared machine).")
    log_format: Literal["text", "json"] = Field(
        "text", description="'text': Faust's log lines; 'json': one JSON object per line (python-json-logger) for "
        "log collectors, the same format from the worker and its archiver child.")
    log_repeat_interval_s: float = Field(
        60.0, gt=0, description="Lines alike (same logger and message template; librdkafka's: same facility) are "
        "logged once per this interval, the next one saying how many were left out; tracebacks and the worker's "
        "own progress lines are never left out. A 50 s broker outage logged ~4,000 lines per worker without it.")
    lag_interval_s: float = Field(5.0, gt=0, description="How often each worker measures its group's consumer lag.")
    stall_after_s: float = Field(
        10.0, gt=0, description="/healthz fails when the engine has lag on its partitions but consumed nothing for "
        "this long while the broker answers (a dead agent or engine thread).")
    debug_endpoints: bool = Field(
        False, description="Serve GET /debug/fail?part=NAME&times=N, which makes a part of the worker crash from "
        "the inside (fault tests only; never in production).")

    # --- model -------------------------------------------------------------------------------
    model_dir: Path = Field(
        Path("artifacts/models/demo-risk/1"),
        description="Directory with model.onnx and model_card.json.",
    )

    # --- online learning (docs/online_learning.md) ------------------------------------------------
    learner: str | None = Field(
        None,
        description="Learner spec name (online_learning.specs), e.g. 'logreg' or 'hoeffding'. Unset: no online "
        "learning, and the ONNX scoring path runs exactly as without this capability.",
    )
    labels_topic: str = Field("labels", description="Label records (schemas/label.avsc), keyed by event id; "
                              "created with ONE partition: one worker learns, all score.")
    online_prediction_topic: str = "online-predictions"
    learner_metrics_topic: str = "learner-metrics"
    snapshot_dir: Path | None = Field(
        None, description="Learner snapshots; default <state_dir>/snapshots. Must be shared by every worker of "
        "the app (same host, or a shared volume), since the owner writes and all load.",
    )
    snapshot_every_n: int = Field(1000, ge=1, description="Snapshot after this many labels consumed...")
    snapshot_every_s: float = Field(60.0, gt=0, description="...or this long after the last snapshot.")
    snapshot_poll_s: float = Field(1.0, gt=0, description="How often workers look for a newer snapshot.")
    snapshot_hmac_key: str | None = Field(
        None, repr=False, exclude=True, description="Older name of signing_key (kept working); never printed.",
    )
    learner_classes: tuple[str, str] = Field(
        ("legit", "risky"), description="Binary learners: (negative, positive) class names, as in the model card.",
    )
    learner_features: list[str] | None = Field(
        None, description="Features the learner reads, in order; default the ONNX model's signature.",
    )
    join_ttl_s: float = Field(3600.0, gt=0, description="How long features wait for their label.")
    join_max_size: int = Field(100_000, ge=1, description="Most events held for the join (memory bound).")
    join_catchup_s: float = Field(2.0, ge=0, description="Longest a label batch waits for features still "
                                  "in flight before its missing events count as unknown.")

    # --- data versioning (docs/data_versioning.md) ---------------------------------------------------
    archive: bool = Field(True, description="Run the archiver in every worker: inputs and predictions into sealed "
                          "Avro segments (consumer group <app_id>-archive). false: nothing is archived.")
    archive_mode: Literal["process", "thread"] = Field(
        "process", description="process: the worker runs the archive lane as a child process (its own GIL: the "
        "fastavro encoding does not slow scoring); thread: inside the worker process.")
    archive_nice: int = Field(
        10, ge=0, le=19, description="process mode: the archiver child's nice increment. Archiving costs ~2x "
        "scoring's CPU per event and is not latency-bound (acked when sealed), so on busy cores scoring goes first "
        "and the archive catches up; watch the <app_id>-archive group's lag if the load never falls. 0: same "
        "priority as scoring.")
    archive_sched_idle: bool = Field(
        True, description="process mode, Linux: the archiver child also runs under SCHED_IDLE, so it gets CPU only "
        "where nothing else wants it. Niced by 10 alone it still took about a core from scoring under a backlog "
        "(worker as deployed 0.4-0.6x its scoring-only throughput on 2 cores). false: only archive_nice applies.")
    data_dir: Path | None = Field(None, description="Archive segments, manifests and dataset versions; default "
                                  "<state_dir>/data. Shared by every worker of the app (same host or shared volume).")
    data_store_url: str | None = Field(
        None, description="s3://bucket/prefix for an S3-compatible store: documented but NOT implemented; a worker "
        "or command given one stops with an error. Unset: the local data_dir.",
    )
    archive_segment_records: int = Field(10_000, ge=1, description="A segment is sealed at this many records...")
    archive_segment_seconds: float = Field(30.0, gt=0, description="...or this long after its first record. Events "
                                           "are acked (offsets committed) only once their segment is sealed.")
    archive_codec: Literal["null", "deflate", "snappy"] = Field("deflate", description="Avro block codec of segments.")
    data_retention_max_age_s: float | None = Field(
        None, gt=0, description="Delete sealed segments older than this that no dataset version references. "
        "Unset: keep.")
    data_retention_max_bytes: int | None = Field(
        None, gt=0, description="Delete the oldest unreferenced segments while the archive is larger. Unset: no limit.")
    archive_compact_below_records: int | None = Field(
        None, ge=2, description="Merge runs of sealed segments smaller than this (time-sealed, slow streams) into "
        "segments of up to archive_segment_records; versions' segments are never touched. Unset: no compaction.")

    # --- drift monitoring (docs/drift.md) --------------------------------------------------------
    drift_topic: str = Field("drift", description="Drift records (schemas/drift_record.avsc), keyed by model name.")
    alerts_topic: str = Field("alerts", description="Debounced drift alerts (schemas/drift_alert.avsc).")
    retrain_topic: str = Field("retrain-requests", description="Retrain requests (schemas/retrain_request.avsc).")
    drift_window: int = Field(
        2000, ge=0, description="Input events in the sliding drift window (group <app_id>-drift); 0 turns drift "
        "monitoring off.",
    )
    drift_interval_s: float = Field(5.0, gt=0, description="How often the window is compared with the reference.")
    drift_max_events_per_s: int = Field(
        5000, ge=1, description="Inputs the drift window takes per second at most (from the batches scoring has "
        "decoded); above it the window holds a sample of the stream, spread over each batch.",
    )
    drift_thresholds: DriftThresholds = Field(
        default_factory=DriftThresholds,
        description="PSI/KS/chi-square/Wasserstein/missing-rate thresholds, JSON or "
        "STREAMSCORE_DRIFT_THRESHOLDS__<NAME>.",
    )
    drift_alert_cooldown_s: float = Field(
        300.0, ge=0, description="A firing alert is repeated at most this often while drift persists."
    )
    drift_resolve_after: int = Field(3, ge=1, description="Evaluations without alert-level drift that resolve it.")
    drift_retrain_on_alert: bool = Field(True, description="A new alert also publishes a retrain request.")
    drift_concept: bool = Field(True, description="Also read the labels topic and run ADWIN / Page-Hinkley on the "
                                "model's error stream (concept drift).")
    drift_label_join_size: int = Field(100_000, ge=1, description="Input rows the drift lane keeps by event id "
                                       "for their labels (oldest dropped first; join_ttl_s also applies).")

    # --- control plane: signatures of registry records and learner snapshots ----------------------------
    signing_key: str | None = Field(
        None, repr=False, exclude=True, description="HMAC-SHA256 key (>= 16 characters) that signs and verifies "
        "registry records and learner snapshots; never printed. Prefer signing_key_file.")
    signing_key_file: Path | None = Field(
        None, description="File holding the signing key (a mounted secret). Unset: <state_dir>/signing-key, "
        "generated on first use with the embedded broker only; on Kafka a key must be given.")

    # --- model registry and routing (docs/registry.md) ------------------------------------------------
    registry_model: str | None = Field(
        None, description="Registry model name the worker serves (its champion, or as routes say); changes are "
        "picked up at run time from registry_topic. Unset: no registry, the worker scores with model_dir.",
    )
    registry_dir: Path | None = Field(
        None, description="Registry artifacts and change log; default <state_dir>/registry. Shared by every worker "
        "and the CLI (same host or a shared volume).",
    )
    registry_topic: str = Field("_streamscore-registry", description="Control topic (1 partition, compacted): the "
                                "registry change log, keyed by model or route; workers replay it from the start.")
    registry_features: list[str] | None = Field(
        None, description="Feature schema registered models must take, in order; default the model_dir model's.",
    )
    routes: dict[str, dict] = Field(
        default_factory=dict, description="Input topic ('*' = every topic) -> routing spec "
        "(schemas.routes.RouteSpec: single, ab, canary, shadow, bandit), JSON; overridden at run time by "
        "`streamscore models route`.",
    )
    shadow_topic: str = Field("predictions-shadow", description="Where shadow-scored predictions go (never the "
                              "prediction topic).")

    # --- closed loop: the retrain service, `streamscore retrain` (docs/closed_loop.md) -------------------------
    # Only that service reads these; the scoring worker never retrains.
    retrain_lifecycle_topic: str = Field("model-lifecycle", description="Lifecycle events of the closed loop (one "
                                         "partition): request received ... promoted or rejected, and approvals.")
    retrain_min_rows: int = Field(500, ge=2, description="Labelled rows a retrain needs; fewer: the request is "
                                  "rejected with the count.")
    retrain_data_wait_s: float = Field(120.0, gt=0, description="How long a request waits for its inputs to be "
                                       "sealed in the archive and labelled before it is rejected.")
    retrain_cooldown_s: float = Field(3600.0, ge=0, description="At most one retrain per model this often; requests "
                                      "inside it are skipped (lifecycle request_skipped).")
    retrain_approval: Literal["auto", "manual"] = Field(
        "auto", description="auto: a candidate that passes the gate is promoted; manual: it waits for "
        "`streamscore models approve NAME VERSION` (or `streamscore retrain approve`, the same command).")
    retrain_route_topic: str = Field("*", description="Input topic (or '*') whose route the service sets to shadow "
                                     "while a candidate is judged, and back to the champion after.")
    retrain_gate_min_samples: int = Field(300, ge=10, description="Paired labelled events (scored by both champion "
                                          "and challenger) the gate decides on, once.")
    retrain_gate_min_improvement: float = Field(0.005, ge=0, description="Mean log-loss reduction per event the "
                                                "challenger must show.")
    retrain_gate_alpha: float = Field(0.05, gt=0, lt=0.5, description="Largest bootstrap p-value (share of resampled "
                                      "mean improvements <= 0) that passes.")
    retrain_gate_resamples: int = Field(2000, ge=100, description="Paired bootstrap resamples.")
    retrain_gate_seed: int = Field(0, description="Seed of the bootstrap (a decision can be recomputed).")
    retrain_gate_max_wait_s: float = Field(3600.0, gt=0, description="A candidate without enough paired labelled "
                                           "events this long after its shadow started is rejected.")
    retrain_poll_s: float = Field(0.5, gt=0, description="How often the service polls requests, labels and scores.")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if value != "embedded" and not value.startswith("kafka://"):
            raise ValueError("broker must be 'embedded' or kafka://host:port[,host:port]")
        return value

    @model_validator(mode="after")
    def _read_password_file(self) -> Settings:
        if self.sasl_password_file is not None:
            if self.sasl_password is not None:
                raise ValueError("set sasl_password or sasl_password_file, not both")
            # Secrets written with `echo` end in a newline that is not part of the password.
            self.sasl_password = self.sasl_password_file.read_text().rstrip("\r\n")
        if self.schema_registry_basic_auth_file is not None:
            if self.schema_registry_basic_auth is not None:
                raise ValueError("set schema_registry_basic_auth or schema_registry_basic_auth_file, not both")
            self.schema_registry_basic_auth = self.schema_registry_basic_auth_file.read_text().rstrip("\r\n")
        return self

    @model_validator(mode="after")
    def _check_schema_registry(self) -> Settings:
        if self.avro_predictions and self.schema_registry_url is None:
            # Local ids mean other schemas in any registry a consumer might use: refuse rather than mislead.
            raise ValueError("avro_predictions needs schema_registry_url (Avro predictions carry registry schema ids)")
        return self

    @field_validator("schema_registry_url")
    @classmethod
    def _check_schema_registry_url(cls, value: str | None) -> str | None:
        if value is not None:
            for url in value.split(","):
                if not url.strip().startswith(("http://", "https://")):
                    raise ValueError("schema_registry_url must be http(s)://host:port[,http(s)://host:port]")
        return value

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, value: dict[str, dict]) -> dict[str, dict]:
        for spec in value.values():
            RouteSpec.model_validate(spec)
        return value

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file if self.signing_key_file is not None else self.state_dir / "signing-key"

    def signing_key_bytes(self) -> bytes:
        """The deployment's signing key: the setting, else its file; generated there only on the embedded broker
        (a development set-up), so a production worker without a key stops with one clear line."""
        return resolve_key(self.signing_key or self.snapshot_hmac_key, self.signing_key_file,
                           default_file=self.state_dir / "signing-key", create=self.is_embedded)

    @property
    def registry_path(self) -> Path:
        return self.registry_dir if self.registry_dir is not None else self.state_dir / "registry"

    @property
    def is_embedded(self) -> bool:
        return self.broker == "embedded"

    @property
    def snapshot_path(self) -> Path:
        return self.snapshot_dir if self.snapshot_dir is not None else self.state_dir / "snapshots"

    @property
    def data_path(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.state_dir / "data"

    @property
    def fetch_wait_ms(self) -> int:
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        return 10 if self.is_embedded else 500

    @property
    def producer_idempotence(self) -> bool:
        return (not self.is_embedded) if self.idempotent_producer is None else self.idempotent_producer

    @property
    def bootstrap_servers(self) -> str:
        if self.is_embedded:
            return f"127.0.0.1:{self.embedded_port}"
        return self.broker.removeprefix("kafka://")

    @property
    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{hp}" for hp in self.bootstrap_servers.split(","))

    @cached_property
    def worker_name(self) -> str:
        import os
        import socket

        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def as_env(self) -> dict[str, str]:
        """These settings as STREAMSCORE_* variables, to hand to a child process."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                text = json.dumps(value) if isinstance(value, dict | list) else str(value)
                env[f"STREAMSCORE_{name.upper()}"] = text
        for name in SECRET_FIELDS:  # excluded from model_dump; a *_file is read again instead
            value = getattr(self, name)
            if value is not None and getattr(self, f"{name}_file", None) is None:
                env[f"STREAMSCORE_{name.upper()}"] = value
        return env

    @property
    def background_fetch_wait_ms(self) -> int:
        """Fetch wait of consumers beside scoring (drift, archive, rewards): latency is not their concern, and
        on Tansu, which holds every fetch for the full wait, 10 ms fetches kept an idle worker and the broker
        at 0.2 cores each (measured); 250 ms halves that."""
        return max(self.fetch_wait_ms, 250)

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> Settings:
        """A copy with ``update`` applied; derived values (scopes, worker name) are derived again from it."""
        copy = super().model_copy(update=update, deep=deep)
        for name in _DERIVED:
            copy.__dict__.pop(name, None)
        return copy

    @cached_property
    def kafka(self) -> KafkaSettings:
        """The Kafka scope (``KafkaSettings``): what every client is built from."""
        return KafkaSettings.of(self)

    @cached_property
    def scoring(self) -> ScoringSettings:
        """The scoring scope (``ScoringSettings``): what the pipeline and the engines read."""
        return ScoringSettings.of(self)

    def group_consumer_config(self, group_id: str) -> dict[str, str | int | bool]:
        return self.kafka.group_consumer_config(group_id)

    def kafka_client_config(self) -> dict[str, str | int]:
        return self.kafka.kafka_client_config()


# --- scopes: what each part of the worker may read -------------------------------------------------------
# ``Settings`` is the one flat surface users configure (every STREAMSCORE_* name stays as it is); each
# object receives only the scope it needs, a frozen view with the same field names.


_DERIVED = ("kafka", "scoring", "worker_name")  # cached properties of Settings


class _Scope(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    @classmethod
    def of(cls, settings: Settings) -> _Scope:
        return cls.model_validate({name: getattr(settings, name) for name in cls.model_fields})


class KafkaSettings(_Scope):
    """How every Kafka client connects, joins groups, fetches and commits."""

    app_id: str
    bootstrap_servers: str
    is_embedded: bool
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None = Field(repr=False, exclude=True)
    ssl_cafile: Path | None
    session_timeout_ms: int
    heartbeat_interval_ms: int
    fetch_wait_ms: int
    background_fetch_wait_ms: int
    producer_idempotence: bool
    commit_interval_s: float
    partitions: int
    replication_factor: int

    def kafka_client_config(self) -> dict[str, str | int]:
        """librdkafka settings shared by every confluent-kafka client we create."""
        conf: dict[str, str | int] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            # librdkafka would default to GSSAPI; PLAIN is what the Faust transport assumes too.
            conf["sasl.mechanism"] = self.sasl_mechanism or "PLAIN"
            if self.sasl_username is not None:
                conf["sasl.username"] = self.sasl_username
            if self.sasl_password is not None:
                conf["sasl.password"] = self.sasl_password
        if self.security_protocol.endswith("SSL") and self.ssl_cafile is not None:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        return conf

    def group_consumer_config(self, group_id: str) -> dict[str, str | int | bool]:
        """A confluent-kafka consumer in ``group_id`` that commits by hand (only what it has finished)."""
        return {
            **self.kafka_client_config(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "fetch.wait.max.ms": self.fetch_wait_ms,
        }


class ScoringSettings(_Scope):
    """The scoring path: input topics and formats, micro-batches, limits, outputs, the served model."""

    engine: str
    input_topics: dict[str, InputFormat]
    prediction_topic: str
    dead_letter_topic: str
    batch_size: int
    batch_within_ms: float
    max_payload_bytes: int
    model_dir: Path
    worker_name: str
    commit_interval_s: float


class SCOPES:  # noqa: N801 - a namespace: scope name -> scope class, for the docs and the tests
    kafka = KafkaSettings
    scoring = ScoringSettings


# --- what a user gets told when the environment is wrong ---------------------------------------------------
def _env_name(field: str) -> str:
    return f"{Settings.model_config['env_prefix']}{field.upper()}"


def settings_error_line(exc: Exception) -> str:
    """One line for a settings mistake: the variable, the bad value, what is accepted.

    >>> import pydantic
    >>> try:
    ...     Settings(partitions=0)
    ... except pydantic.ValidationError as exc:
    ...     print(settings_error_line(exc))
    STREAMSCORE_PARTITIONS=0: Input should be greater than or equal to 1 (accepted: int; Partitions for topics ...)
    """
    from pydantic import ValidationError  # the one error type pydantic raises for bad input

    if not isinstance(exc, ValidationError) or not exc.errors():
        return str(exc).splitlines()[0]
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first.get("loc") else ""
    if field not in Settings.model_fields:  # a model-level check (e.g. password and password file together)
        return f"settings: {first['msg'].removeprefix('Value error, ')}"
    info = Settings.model_fields[field]
    kind = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
    hint = " ".join((info.description or "").split())
    accepted = f"{kind}; {hint[:60]}{' ...' if len(hint) > 60 else ''}" if hint else kind
    value = first.get("input")
    shown = value if isinstance(value, str | int | float) else json.dumps(value, default=str)[:80]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{_env_name(field)}={shown}: {first['msg'].removeprefix('Value error, ')} (accepted: {accepted}){more}"


def unknown_env_names(environ: dict[str, str]) -> list[tuple[str, str | None]]:
    """``STREAMSCORE_*`` variables that name no setting, each with the closest valid name (or None).

    >>> unknown_env_names({"STREAMSCORE_MODEL_DIRR": "x", "STREAMSCORE_BROKER": "embedded", "HOME": "/"})
    [('STREAMSCORE_MODEL_DIRR', 'STREAMSCORE_MODEL_DIR')]
    """
    import difflib  # stdlib; only when the environment is checked

    prefix = Settings.model_config["env_prefix"]
    valid = {_env_name(name) for name in Settings.model_fields}
    nested = {f"{_env_name(name)}__" for name in Settings.model_fields}  # STREAMSCORE_DRIFT_THRESHOLDS__<NAME>
    extra = {"STREAMSCORE_TEST_BROKER"}  # read by the test suite, not by Settings
    unknown = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in valid or name in extra or name.startswith(tuple(nested)):
            continue
        close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.75)
        unknown.append((name, close[0] if close else None))
    return unknown
