"""The first hour's commands against the real embedded broker, run as a user runs them (`python -m streams.cli.main`):
fresh event ids per `produce`, `tail` from the latest offset with a header, `produce --labels` writes exactly one
label per event (the demo's concept), and a stopped broker is answered in seconds with the fix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from schemas.labels import decode_label
from schemas.records import FeatureEvent
from streams.cli.produce import true_label
from streams.kafka.reader import read_all
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def cli_env(s: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env.update({**s.as_env(), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                "COLUMNS": "100", **extra})
    return env


def cli(s: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], env=cli_env(s, **extra),
                          capture_output=True, text=True, timeout=180)


def ids_on(s: Settings, topic: str) -> list[str]:
    return [m.key().decode() for m in read_all(s, topic)]


def run_settings(base_settings: Settings) -> Settings:
    run = uuid.uuid4().hex[:8]
    return base_settings.model_copy(update={"input_topics": {f"features-{run}": "json", f"avro-{run}": "avro"},
                                            "labels_topic": f"labels-{run}"})


def test_produce_fresh_ids_tail_latest_and_labels(base_settings: Settings) -> None:
    s = run_settings(base_settings)
    topic, avro_topic = list(s.input_topics)

    first = cli(s, "produce", "-n", "50")
    assert first.returncode == 0, first.stdout + first.stderr
    ids_1 = set(ids_on(s, topic))
    second = cli(s, "produce", "-n", "50")
    assert second.returncode == 0, second.stderr
    ids_all = ids_on(s, topic)
    assert len(ids_1) == 50 and len(ids_all) == 100 and len(set(ids_all)) == 100  # disjoint: no id re-sent
    seeded = [cli(s, "produce", "-n", "5", "--seed", "42", "--topic", f"seeded-{topic}") for _ in range(2)]
    assert all(r.returncode == 0 for r in seeded)
    assert sorted(ids_on(s, f"seeded-{topic}")) == sorted([f"evt-42-{i}" for i in range(5)] * 2)  # repeatable

    avro = cli(s, "produce", "-n", "7", "--format", "avro")  # to the input topic whose format is avro
    assert avro.returncode == 0 and f"7 events delivered to {avro_topic}" in avro.stdout, avro.stdout + avro.stderr
    assert len(ids_on(s, avro_topic)) == 7 and len(ids_on(s, topic)) == 100

    # tail starts at the latest offset: only what is produced after it started, under a header
    tail = subprocess.Popen([sys.executable, "-m", "streams.cli.main", "tail", topic, "--limit", "20"],
                            env=cli_env(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        header = tail.stdout.readline()  # printed once the partitions are assigned at their end offsets
        assert header.split()[:3] == ["p:offset", "event", "time"], header
        third = cli(s, "produce", "-n", "20")
        assert third.returncode == 0, third.stderr
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    new_ids = set(ids_on(s, topic)) - set(ids_all)
    shown = [line.split()[3] for line in out.splitlines()]
    assert len(shown) == 20 and set(shown) == new_ids  # none of the 100 before, each new one once

    as_json = cli(s, "tail", topic, "--from-beginning", "--no-follow", "--json")
    rows = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert len(rows) == 120 and {r["event_id"] for r in rows} == set(ids_on(s, topic))

    # labels: one per event on the input topics (JSON and Avro), the demo's concept; a second run adds none
    labelled = cli(s, "produce", "--labels")
    assert labelled.returncode == 0, labelled.stdout + labelled.stderr
    assert "127 labels delivered" in labelled.stdout, labelled.stdout
    labels = [decode_label(m.value()) for m in read_all(s, s.labels_topic)]
    events = {e["event_id"]: e for e in rows}
    assert len(labels) == 127 and {lab.event_id for lab in labels} == set(events) | set(ids_on(s, avro_topic))
    for lab in labels:
        if lab.event_id in events:
            assert lab.label == ("legit", "risky")[true_label(FeatureEvent.model_validate(events[lab.event_id]))]
    again = cli(s, "produce", "--labels")
    assert again.returncode == 0 and "no events without a label" in again.stdout, again.stdout
    assert len(read_all(s, s.labels_topic)) == 127


def test_noisy_labels_flip_about_the_asked_share(base_settings: Settings) -> None:
    s = run_settings(base_settings)
    topic = next(iter(s.input_topics))
    assert cli(s, "produce", "-n", "400", "--seed", "5").returncode == 0
    noisy = cli(s, "produce", "--labels", "--noise", "0.25", "--seed", "1")
    assert noisy.returncode == 0, noisy.stderr
    events = {e.event_id: e for e in (FeatureEvent.model_validate(orjson.loads(m.value()))
                                      for m in read_all(s, topic))}
    labels = [decode_label(m.value()) for m in read_all(s, s.labels_topic)]
    flipped = sum(lab.label != ("legit", "risky")[true_label(events[lab.event_id])] for lab in labels)
    assert len(labels) == 400
    assert 60 <= flipped <= 140, flipped  # Binomial(400, 0.25): mean 100, sd 8.7; bounds at ~4.6 sd


def test_broker_down_answers_fast_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # released: nothing listens there
    s = Settings(embedded_port=port, state_dir=tmp_path)
    for args in (["tail", "predictions"], ["drift", "status"], ["tail", "dead-letter", "--json"]):
        started = time.monotonic()
        result = cli(s, *args)
        took = time.monotonic() - started
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 2 and len(output.splitlines()) == 1, output
        assert f"127.0.0.1:{port}" in output and "streamscore broker up" in output and "Traceback" not in output
        assert took < 5.0, (args, took)  # measured ~1.5 s (the interpreter start dominates)
