"""A worker's /metrics page, parsed: for tests that read its counters and histograms."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metric_families(port: int, timeout: float = 5.0) -> dict[str, list[Sample]]:
    """The worker's /metrics on ``port`` as {metric family name: samples}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}
