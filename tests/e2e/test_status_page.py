"""End to end: the worker's status page at / in a real browser (headless Debian chromium), over the real broker.

A worker with drift on, bound to 127.0.0.1 (``web_bind``), scores good and bad events, then a shifted stream
until drift alerts; a slow producer keeps events flowing while chromium renders the page, so throughput is
live. The page's DOM must show the served model and its route, the throughput, the exact dead letters by
reason, the drift alert, and /drift/report the full drift report; screenshots are kept in the test's tmp dir.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from models.demo import FEATURE_NAMES, sample_events
from streams.cli.produce import bad_payloads, encode_events, produce
from streams.settings import Settings
from tests.conftest import Flow, free_port
from tests.support.waiting import wait_until
from tests.unit.streams.test_drift_monitor import SHIFT

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N_GOOD, N_SHIFTED = 2400, 1500
# Every kind of bad input once, not_json three times: the page must show these exact counts per reason.
BAD = [p for tag in "012" for reason, p in bad_payloads(FEATURE_NAMES, tag) if tag == "0" or reason == "not_json"]
EXPECTED_DEAD = {reason: 1 for reason, _ in bad_payloads(FEATURE_NAMES)} | {"not_json": 3}


@pytest.fixture
def engine() -> str:
    return "batch"  # the page reads the same counters and parts under either engine


@pytest.fixture
def sflow(flow: Flow) -> Flow:
    run = flow.settings.app_id.removeprefix("test-")
    flow.settings = flow.settings.model_copy(update={
        "drift_topic": f"drift-{run}", "alerts_topic": f"alerts-{run}", "retrain_topic": f"retrain-{run}",
        "drift_interval_s": 0.3, "drift_window": 2000, "web_bind": "127.0.0.1", "lag_interval_s": 1.0,
    })
    return flow


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status(port: int) -> dict:
    code, body = get(port, "/status.json")
    assert code == 200, body
    return json.loads(body)


def chromium(url: str, out_dir: Path, *args: str) -> str:
    """Run headless chromium on ``url`` (one fresh profile per call); its stdout."""
    profile = out_dir / f"profile-{time.monotonic_ns()}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.rmtree(profile, ignore_errors=True)
    return done.stdout


def listening_on(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (from /proc/net/tcp{,6}: state 0A is LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@contextmanager
def trickle(settings: Settings, topic: str) -> Iterator[None]:
    """Shifted events at ~100/s in the background (drift stays alerting), so the page's rates are not zero."""
    stop = threading.Event()

    def run() -> None:
        for seed in itertools.count(100):
            produce(settings, topic, encode_events(sample_events(seed, 50, shift=SHIFT)))
            if stop.wait(0.5):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium is not installed (as root: `make chromium`, or apt-get install chromium)")
def test_status_page_shows_models_throughput_dead_letters_and_drift_in_a_browser(sflow: Flow) -> None:
    s, flow = sflow.settings, sflow
    port = free_port()
    flow.start_worker(web_port=port)
    assert listening_on(port) == {"0100007F"}, listening_on(port)  # 127.0.0.1 only: the setting took effect

    code, body = get(port, "/drift/report")
    assert code == 404 and "no drift record yet" in body, body

    produce(s, flow.json_topic, encode_events(sample_events(51, N_GOOD)))
    produce(s, flow.json_topic, BAD)
    st = wait_until("every input scored or dead-lettered and a drift record", lambda: (
        x if (x := status(port))["throughput"]["events_in_total"] == N_GOOD + len(BAD)
        and x["drift"]["status"] is not None else None), flow)
    t = st["throughput"]
    assert t["predictions_total"] == N_GOOD and t["dead_letters_total"] == len(BAD) == 11
    assert {d["reason"]: d["total"] for d in t["dead_letters"]} == EXPECTED_DEAD
    assert t["predictions_by_model"]["demo-risk@1"]["total"] == N_GOOD
    assert st["models"]["routes"] == [{"route": "all input topics", "policy": "single", "arm": "-",
                                       "model": "demo-risk@1", "sha256": st["models"]["routes"][0]["sha256"],
                                       "share": 1.0, "role": "serves"}]
    assert st["health"]["status"] == "ok" and st["worker"]["ready"], st["health"]
    assert st["drift"]["status"] != "alert" and st["drift"]["alert"] is None

    produce(s, flow.json_topic, encode_events(sample_events(52, N_SHIFTED, shift=SHIFT)))
    st = wait_until("the drift alert", lambda: (x if (x := status(port))["drift"]["alert"] else None), flow)
    alert = st["drift"]["alert"]
    assert alert["state"] == "firing" and alert["notice"] == 1 and alert["reasons"], alert
    with trickle(s, flow.json_topic):
        wait_until("live throughput", lambda: status(port)["throughput"]["events_in_per_s"] > 0, flow)
        shots = flow.log_dir  # screenshots and the status answer stay here for a look
        (shots / "status.json").write_text(json.dumps(status(port), indent=1))
        dom = chromium(f"http://127.0.0.1:{port}/", shots, "--dump-dom", "--virtual-time-budget=3000")
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<(script|style)>.*?</\1>|<[^>]+>", " ", dom, flags=re.S)))
        assert "demo-risk@1" in text and "all input topics" in text, text
        assert st["models"]["routes"][0]["sha256"][:12] in text
        rate = re.search(r'id="tile-in".*?class="value[^"]*">([\d,.]+)<span class="unit"> events/s<', dom)
        assert rate is not None and float(rate.group(1).replace(",", "")) > 0, dom
        for reason, n in EXPECTED_DEAD.items():
            assert re.search(rf"{reason}\s*</code></td><td>{n}</td>", dom), (reason, n)
        assert re.search(r'id="tile-drift".*?>alert<', dom) and "latest alert:" in text and "firing" in text
        assert alert["reasons"][0] in text
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)", text), text  # readable times
        assert re.search(r'<body data-refreshes="[1-9]', dom), dom[:300]  # the 2 s refresh ran (virtual time)
        assert '<span id="stale" class="bad"></span>' in dom  # ... and the worker answered it

        report = chromium(f"http://127.0.0.1:{port}/drift/report", shots, "--dump-dom")
        assert "Drift of demo-risk@1" in report and ">alert<" in report
        assert report.count("<svg") >= len(FEATURE_NAMES) + 2  # a histogram per feature and score, the strip

        for path, name in (("/", "status.png"), ("/drift/report", "drift-report.png")):
            chromium(f"http://127.0.0.1:{port}{path}", shots, f"--screenshot={shots / name}")
            png = (shots / name).read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, len(png)
