"""Topic names of the flow and their creation.

Every topic of the flow is keyed by the event id, so a prediction or dead letter lands in the same
partition number as its input and duplicates from at-least-once redelivery are easy to collapse.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from streams.kafka import clients
from streams.settings import KafkaSettings, Settings


def flow_topics(settings: Settings) -> list[str]:
    return [*settings.input_topics, settings.prediction_topic, settings.dead_letter_topic]


def ensure_topics(settings: Settings | KafkaSettings, names: Iterable[str] | None = None,
                  timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; return the names that were created.

    ``settings`` may be the Kafka scope alone (the publisher recreates its output topics with it) when ``names``
    are given.
    """
    kafka = settings if isinstance(settings, KafkaSettings) else settings.kafka
    if names is None and isinstance(settings, KafkaSettings):
        raise ValueError("ensure_topics: name the topics when given KafkaSettings")
    admin = clients.admin(kafka)
    wanted = list(dict.fromkeys(names if names is not None else flow_topics(settings)))  # type: ignore[arg-type]
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, kafka.partitions, kafka.replication_factor) for t in missing],
        operation_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won the race
                raise
    return created


def main() -> None:
    """Create the flow's topics from STREAMSCORE_* settings: the one-shot job of docker-compose and k8s.

    ``python -m streams.kafka.topics`` exits non-zero when the broker refuses (e.g. no CreateTopics ACL), so
    the job fails visibly instead of workers starting against missing topics.
    """
    settings = Settings()
    created = ensure_topics(settings, timeout=60.0)
    print(f"topics at {settings.bootstrap_servers}: created {created or 'none'}; "
          f"all present: {', '.join(flow_topics(settings))}")


if __name__ == "__main__":
    main()
