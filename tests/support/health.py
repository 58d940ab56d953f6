"""A worker's health endpoints in end-to-end tests: read one, or watch one until it says what the test waits for."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

__all__ = ["get", "watch"]


def get(port: int, path: str) -> tuple[int, dict]:
    """Status and JSON body of ``path`` (a 503 is an answer here, not an error)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def watch(port: int, predicate: Callable[[int, dict], bool], timeout: float,
          path: str = "/healthz") -> tuple[float, dict]:
    """Seconds until ``path`` satisfies ``predicate(status, body)``, and that body; fails after ``timeout``."""
    started = time.monotonic()
    while True:
        status, body = get(port, path)
        if predicate(status, body):
            return time.monotonic() - started, body
        assert time.monotonic() - started < timeout, f"{path} stayed {status}: {body}"
        time.sleep(0.1)
