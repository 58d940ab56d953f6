"""Health tells the truth: a part of the worker that dies or stalls makes /healthz fail within 10 s.

Parts are made to crash from the inside through the worker's fault-test endpoint (``STREAMSCORE_DEBUG_ENDPOINTS``):
a supervised lane restarts with backoff and /healthz recovers; the archiver child is SIGKILLed and restarted;
a scoring engine thread that is gone stays failing, and with lag on its partitions the scoring part fails too.
"""

from __future__ import annotations

import pytest

from models.demo import sample_events
from streams.cli.produce import encode_events, produce
from streams.kafka.reader import wait_for
from tests.support.health import get, watch

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("engine", ["batch"])
def test_lanes_that_die_fail_health_within_10_s_and_recover_when_restarted(flow):
    s = flow.settings
    proc = flow.start_worker(debug_endpoints=True, drift_window=200, archive=True, lag_interval_s=1.0,
                             stall_after_s=3.0)
    port = proc.settings.web_port
    produce(s, flow.json_topic, encode_events(sample_events(61, 200)))
    wait_for(s, s.prediction_topic, lambda ms: len(ms) >= 200, timeout=60)
    watch(port, lambda status, body: status == 200, timeout=30)

    # A supervised lane crashes three times: failing while it backs off (1 + 2 + 4 s), then healthy again.
    assert get(port, "/debug/fail?part=drift-lane&times=3")[0] == 200
    took, body = watch(port, lambda status, body: status == 503 and "drift-lane" in body["failing"], timeout=10)
    assert took < 10 and body["parts"]["drift-lane"]["last_error"].startswith("InjectedFault")
    _, body = watch(port, lambda status, body: status == 200, timeout=30)
    assert body["parts"]["drift-lane"]["restarts"] == 3

    # The archiver child is killed: failing until its supervisor has started a new one.
    assert get(port, "/debug/fail?part=archiver")[0] == 200
    took, _ = watch(port, lambda status, body: status == 503 and "archiver" in body["failing"], timeout=10)
    assert took < 10
    _, body = watch(port, lambda status, body: status == 200, timeout=30)
    assert body["parts"]["archiver"]["restarts"] == 1

    # The scoring engine's thread is gone: failing at once, and "scoring" too once its partitions have lag.
    assert get(port, "/debug/fail?part=batch-engine")[0] == 200
    took, _ = watch(port, lambda status, body: status == 503 and "batch-engine" in body["failing"], timeout=10)
    assert took < 10
    produce(s, flow.json_topic, encode_events(sample_events(62, 50)))
    took, body = watch(port, lambda status, body: "scoring" in body["failing"], timeout=15)
    assert body["parts"]["scoring"]["lag"] > 0
    assert get(port, "/readyz")[0] == 503
