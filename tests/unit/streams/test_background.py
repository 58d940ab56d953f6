"""The supervised lane: unhealthy from a crash until the restarted ``run`` makes progress again."""

from __future__ import annotations

import threading
import time

from streams.background import BackgroundThread


class SlowToBeatAfterRestart(BackgroundThread):
    """Crashes once at its first beat; the restarted run takes a while (e.g. joining a group) before it beats."""

    thread_name = "slow-restart"
    backoff_s = (0.01,)

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0
        self.release = threading.Event()  # the test lets the restarted run reach its first beat

    def run(self) -> None:
        self.runs += 1
        if self.runs > 1:
            self.release.wait(5)
        while not self.stopping.is_set():
            self.beat()
            time.sleep(0.005)


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_restarted_lane_is_healthy_again_only_from_its_first_beat():
    lane = SlowToBeatAfterRestart()
    lane.start()
    try:
        wait_until(lambda: lane.health()["healthy"])
        lane.inject_failures(1)
        wait_until(lambda: lane.runs == 2)  # restarted, not beating yet
        time.sleep(0.05)
        health = lane.health()
        assert (health["healthy"], health["restarts"], health["last_error"]) == (
            False, 1, "InjectedFault: injected by a fault test")
        lane.release.set()
        wait_until(lambda: lane.health()["healthy"])
        assert lane.health()["restarts"] == 1
    finally:
        lane.release.set()
        lane.stop()
    assert not lane.alive
