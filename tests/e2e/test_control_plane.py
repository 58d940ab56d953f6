"""End to end over the embedded broker: a control plane that cannot be forged, with real worker processes.

Whoever can write to the control topic or the registry directory, but does not hold the deployment key,
cannot change what a worker scores with: forged records (unsigned, or signed with another key) pointing
outside the registry, a record with seq 10**12, a tampered ONNX artifact, a planted pickle. Each is refused
with a visible reason in /registry while the worker keeps scoring every event with the version it has;
a later valid change is applied. Counts are exact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from models.demo import FEATURE_NAMES, sample_events
from models.registry import Change, ModelRegistry, ModelVersion, RegistryRecord, sign_record
from models.signing import KEY_BYTES
from models.train_demo import train_demo_model
from online_learning.snapshots import SnapshotMeta
from streams.cli.produce import encode_events, produce
from streams.kafka.publisher import Outbound, Publisher
from streams.kafka.reader import wait_for
from streams.routing.watcher import (
    RETRY_REJECTED_S,
    ControlPublisher,
    RegistryWatcher,
    ensure_registry_topic,
    registry_for,
)
from tests.support.registry_worker import start_on_known_port, wait_registry_status

pytestmark = pytest.mark.e2e

OTHER_KEY = os.urandom(KEY_BYTES).hex().encode()  # an attacker's key: well-formed, just not the deployment's


@pytest.fixture(scope="module")
def model_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "2"
    train_demo_model(out, seed=8, n=5000, version="2")
    return out


@pytest.fixture
def cflow(flow, model_dir, model_v2):
    """The flow of conftest with a registry: demo-risk v1 champion, v2 registered; key generated (embedded)."""
    run = flow.settings.app_id
    flow.settings = flow.settings.model_copy(update={
        "registry_model": "demo-risk", "registry_topic": f"_registry-{run}", "labels_topic": f"labels-{run}",
        "shadow_topic": f"shadow-{run}"})
    ensure_registry_topic(flow.settings)
    flow.registry = registry_for(flow.settings)
    flow.registry.register(model_dir)
    flow.registry.register(model_v2)
    assert (flow.settings.state_dir / "signing-key").is_file()  # generated on first use: embedded broker
    return flow


# --- helpers -----------------------------------------------------------------------------------------






def champion_of(st: dict) -> str:
    return st["default"]["arms"]["champion"]


def score(flow, seed: int, n: int = 200) -> list[dict]:
    """Produce ``n`` events and return exactly their predictions (each event once)."""
    s = flow.settings
    events = sample_events(seed, n)
    ids = {e["event_id"] for e in events}
    produce(s, flow.json_topic, encode_events(events))

    def covered(messages) -> bool:
        return ids <= {orjson.loads(m.value())["event_id"] for m in messages}

    preds = [p for p in (orjson.loads(m.value()) for m in wait_for(s, s.prediction_topic, covered, 90))
             if p["event_id"] in ids]
    assert len(preds) == len({p["event_id"] for p in preds}) == n, "an event was lost or scored twice"
    return preds


def publish_raw(settings, record: RegistryRecord) -> None:
    """Write a record straight onto the control topic, as anyone with produce rights on it could."""
    publisher = Publisher(settings.kafka)
    publisher.send_batch([Outbound(settings.registry_topic, record.key.encode(),
                                   record.model_dump_json().encode())]).wait(30)
    publisher.close()


def latest(registry: ModelRegistry) -> RegistryRecord:
    return registry.reload().records["model:demo-risk"]


def refused_lines(flow) -> list[str]:
    text = "\n".join(p.read_text(errors="replace") for p in flow.log_dir.glob("worker-*.log"))
    return [line for line in text.splitlines() if "registry record refused" in line]


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.as_env(), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=120)


class Touch:
    """A pickle payload: unpickling it runs ``touch <path>`` (what a planted snapshot would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# --- (a) forged records --------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["faust"])
def test_forged_records_pointing_outside_the_registry_are_refused_and_the_champion_keeps_scoring(cflow, model_v2):
    s, registry = cflow.settings, cflow.registry
    outside = s.state_dir / "outside" / "model"  # the attacker's model, next to (not in) the registry directory
    shutil.copytree(model_v2, outside)
    port = start_on_known_port(cflow)
    before = latest(registry)
    v1 = before.model.versions["1"]
    state = before.model.model_copy(deep=True)
    state.versions["x"] = ModelVersion(**{**state.versions["2"].model_dump(), "version": "x",
                                          "path": os.path.relpath(outside, registry.root)})
    state.aliases["champion"] = "x"
    state.alias_history["champion"].append("x")
    forged = RegistryRecord(seq=before.seq + 1, key="model:demo-risk", change=Change(kind="register", version="x"),
                            model=state, at_ms=time.time_ns() // 1_000_000, by="attacker")
    assert forged.model.versions["x"].path.startswith("../")
    publish_raw(s, forged)  # unsigned
    publish_raw(s, sign_record(forged, OTHER_KEY))  # signed, with a key that is not the deployment's
    st = wait_registry_status(port, lambda st: st["control"]["rejected_total"] >= 2)

    reasons = [r["reason"] for r in st["control"]["rejected"]]
    assert st["control"]["rejected_total"] == 2 and len(reasons) == 2, st["control"]
    assert "unsigned" in reasons[0] and "does not verify" in reasons[1]
    assert st["healthy"] is True and st["last_error"] is None  # forgeries hold nothing back: still ready
    assert champion_of(st) == "demo-risk@1" and st["control"]["seq"] == before.seq
    preds = score(cflow, 61)
    assert [(p["model_version"], p["model_sha256"]) for p in preds] == [("1", v1.sha256)] * 200
    assert len(refused_lines(cflow)) == 2  # logged once each, one line each
    print(f"2 forged records refused ({reasons}); 200 events -> 200 predictions by demo-risk@1")


# --- (b) a seq far ahead -----------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["batch"])
def test_a_record_with_seq_10_to_the_12_is_refused_and_a_later_promote_is_applied(cflow):
    s, registry = cflow.settings, cflow.registry
    port = start_on_known_port(cflow)
    before = latest(registry)
    state = before.model.model_copy(deep=True)
    state.aliases["champion"] = "2"
    state.alias_history["champion"].append("2")
    # signed with the deployment key itself (a replayed or insider record): only its seq is wrong. Taken, it
    # would make every later record look old to a "higher seq wins" reader.
    ahead = sign_record(RegistryRecord(seq=10**12, key="model:demo-risk", change=Change(
        kind="promote", version="2", alias="champion", previous="1"), model=state, at_ms=0, by="replay"),
        s.signing_key_bytes())
    publish_raw(s, ahead)
    st = wait_registry_status(port, lambda st: st["control"]["rejected_total"] >= 1)
    assert st["control"]["rejected_total"] == 1 and "seq jumps" in st["control"]["rejected"][0]["reason"]
    assert st["control"]["seq"] == before.seq and champion_of(st) == "demo-risk@1" and st["healthy"] is True
    assert {p["model_version"] for p in score(cflow, 62, 100)} == {"1"}

    cli_started = time.monotonic()
    done = cli(s, "models", "promote", "demo-risk", "2")  # a real CLI process, as an operator runs it
    assert done.returncode == 0, done.stdout + done.stderr
    promoted = time.monotonic()
    st = wait_registry_status(port, lambda st: champion_of(st) == "demo-risk@2")
    switched_s, cli_s = time.monotonic() - promoted, promoted - cli_started
    assert champion_of(st) == "demo-risk@2" and st["control"]["seq"] == before.seq + 1
    preds = score(cflow, 63, 100)
    assert [p["model_version"] for p in preds] == ["2"] * 100
    assert st["control"]["rejected_total"] == 1 and st["healthy"] is True
    print(f"seq 10**12 refused; `models promote` (CLI process, {cli_s:.1f} s) returned -> worker on v2 "
          f"{switched_s:.2f} s later; "
          "100 + 100 events scored by v1 then v2")


# --- (c) tampered artifacts --------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["batch"])
def test_tampered_onnx_is_refused_by_promote_and_by_the_worker_which_keeps_serving(cflow):
    s, registry = cflow.settings, cflow.registry
    port = start_on_known_port(cflow)
    artifact = registry.root / "models" / "demo-risk" / "2" / "model.onnx"
    original = artifact.read_bytes()
    v1 = latest(registry).model.versions["1"]

    artifact.write_bytes(original + b"\0")  # tampered after registration
    refused = cli(s, "models", "promote", "demo-risk", "2")
    lines = [line for line in refused.stdout.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "sha256" in lines[0], refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    artifact.write_bytes(original)

    # promoted while intact, tampered before the worker applies it (a shared volume written behind our back)
    offline = ModelRegistry(registry.root, FEATURE_NAMES, key=s.signing_key_bytes())
    record = offline.promote("demo-risk", "2")
    artifact.write_bytes(original + b"\0")
    ControlPublisher(s)(record)
    st = wait_registry_status(port, lambda st: st["control"]["rejected_total"] >= 1 and not st["healthy"])
    reason = st["control"]["rejected"][0]["reason"]
    assert st["control"]["rejected_total"] == 1 and "sha256" in reason and st["control"]["rejected"][0]["seq"] == \
        record.seq
    assert st["healthy"] is False and "model:demo-risk" in st["last_error"]  # behind the registry: not ready
    assert st["control"]["pending"] == [f"model:demo-risk@{record.seq}"] and champion_of(st) == "demo-risk@1"
    preds = score(cflow, 64)
    assert [(p["model_version"], p["model_sha256"]) for p in preds] == [("1", v1.sha256)] * 200
    assert len(refused_lines(cflow)) == 1

    artifact.write_bytes(original)  # repaired: the refused record is retried and applied, no restart
    repaired = time.monotonic()
    st = wait_registry_status(port, lambda st: champion_of(st) == "demo-risk@2" and st["healthy"], RETRY_REJECTED_S * 6)
    recovered_s = time.monotonic() - repaired
    assert champion_of(st) == "demo-risk@2" and st["healthy"] and st["control"]["pending"] == []
    assert [p["model_version"] for p in score(cflow, 65)] == ["2"] * 200
    print(f"tampered v2: promote refused (exit 2, one line); worker refused the record, 200/200 by v1; repaired "
          f"artifact applied on retry after {recovered_s:.1f} s (retry every {RETRY_REJECTED_S:.0f} s), 200/200 by v2")


# --- (d) a planted pickle ------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["batch"])
def test_a_river_record_pointing_at_a_planted_pickle_never_runs_it(cflow, tmp_path):
    s, registry = cflow.settings, cflow.registry
    probe, marker = tmp_path / "probe", tmp_path / "pwned"
    pickle.loads(pickle.dumps({"model": Touch(probe)}))  # the payload is live: plain unpickling runs it
    assert probe.exists()

    port = start_on_known_port(cflow)
    before = latest(registry)
    data = pickle.dumps({"model": Touch(marker)})
    sha = hashlib.sha256(data).hexdigest()
    planted = registry.root / "models" / "demo-risk" / "river-1"
    planted.mkdir(parents=True)
    (planted / "model.pkl").write_bytes(data)
    (planted / "snapshot.json").write_text(SnapshotMeta(
        version=1, parent=None, kind="learned", learner="logreg", created_at=0, worker="attacker", sha256=sha,
        size=len(data), feature_names=list(FEATURE_NAMES), classes=before.model.versions["1"].classes,
    ).model_dump_json())
    state = before.model.model_copy(deep=True)
    state.versions["river-1"] = ModelVersion(**{**state.versions["1"].model_dump(), "version": "river-1",
                                                "kind": "river", "sha256": sha, "path": "models/demo-risk/river-1"})
    state.aliases["champion"] = "river-1"
    state.alias_history["champion"].append("river-1")
    record = RegistryRecord(seq=before.seq + 1, key="model:demo-risk", change=Change(kind="register",
                            version="river-1"), model=state, at_ms=0, by="attacker")
    publish_raw(s, record)  # unsigned
    publish_raw(s, sign_record(record, OTHER_KEY))
    st = wait_registry_status(port, lambda st: st["control"]["rejected_total"] >= 2)
    assert st["control"]["rejected_total"] == 2 and st["healthy"] and champion_of(st) == "demo-risk@1"
    # even with the deployment key (stolen): the record pins the pickle's sha256 so it is taken, but the pickle
    # names posix.system, outside the exact allowlist: never unpickled, the table is not rebuilt
    publish_raw(s, sign_record(record, s.signing_key_bytes()))
    st = wait_registry_status(port, lambda st: not st["healthy"])
    assert st["healthy"] is False and "system" in st["last_error"] and "not an allowed class" in st["last_error"]
    assert champion_of(st) == "demo-risk@1" and st["control"]["rejected_total"] == 2
    preds = score(cflow, 66)
    assert [p["model_version"] for p in preds] == ["1"] * 200
    time.sleep(RETRY_REJECTED_S + 1)  # and the periodic retry does not run it either
    assert not marker.exists()
    print(f"planted pickle: 2 forged records refused, the signed one never unpickled ({st['last_error'][:90]}...); "
          "200/200 by v1; marker file not created")


# --- the watcher thread does not die ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["batch"])
def test_the_watcher_thread_backs_off_and_recovers_from_unexpected_errors_without_losing_the_record(cflow, caplog):
    """In-process (the error is injected), over the real broker: applying the promote fails 3 times with an
    unexpected error; the thread logs once, backs off 1, 2, 4 s, reads the record again and applies it."""
    watcher = RegistryWatcher(cflow.settings, tuple(FEATURE_NAMES))
    real_apply, calls = watcher.reader.follower.apply_record, []

    def flaky(raw, offset=None):
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise RuntimeError("disk exploded")
        return real_apply(raw, offset=offset)

    watcher.reader.follower.apply_record = flaky
    with caplog.at_level(logging.WARNING, logger="streams.routing.watcher"):
        watcher.start()
        try:
            cflow.registry.promote("demo-risk", "2")
            deadline = time.monotonic() + 20
            while not calls and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            assert watcher.healthy is False and "disk exploded" in watcher.last_error and watcher.alive
            deadline = time.monotonic() + 30
            # the table is swapped a moment before the watcher marks itself healthy again: wait for both
            while not (watcher.router.table.default.scorers[0].version == "2" and watcher.healthy) and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            assert watcher.router.table.default.scorers[0].version == "2" and watcher.alive and watcher.healthy
        finally:
            watcher.stop()
    gaps = [b - a for a, b in zip(calls, calls[1:4], strict=False)]
    failed = [r for r in caplog.records if "registry watcher failed" in r.getMessage()]
    assert watcher.thread_errors == 3 and len(failed) == 1, [r.getMessage() for r in caplog.records]
    assert len(calls) == 4 and watcher.reader.follower.seq == 3  # the same record read 4 times, applied once
    # backoff 1 s, 2 s, 4 s (then it worked); upper bounds generous: the machine is shared and slow
    assert len(gaps) == 3 and all(want <= gap < want + 2 for want, gap in zip([1, 2, 4], gaps, strict=True)), gaps
    print(f"watcher: 3 injected failures, 1 log line, backoff gaps {[round(g, 2) for g in gaps]} s, then the promote "
          "was read again and applied")
