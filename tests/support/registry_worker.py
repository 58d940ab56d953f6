"""A worker of an end-to-end flow whose routing follows the model registry, and its `/registry` status page."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

from tests.conftest import Flow, free_port


def start_on_known_port(flow: Flow) -> int:
    """Start a worker on a free web port and return that port (the tests read its /registry status there)."""
    port = free_port()
    flow.start_worker(web_port=port)
    return port


def registry_status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/registry", timeout=5) as resp:
        return json.loads(resp.read())


def wait_registry_status(port: int, predicate: Callable[[dict], object], timeout: float = 30) -> dict:
    """The worker's /registry status once ``predicate`` holds, or the last one read after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        current = registry_status(port)
        if predicate(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)
