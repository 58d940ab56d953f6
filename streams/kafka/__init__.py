"""Everything that talks Kafka: the client factory and message iterator, the publisher, topic creation,
readers outside any group, the embedded Tansu broker and the Faust transport tweaks."""
