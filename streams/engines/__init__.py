"""The two scoring engines that feed the pipeline: the Faust agent and the confluent-kafka batch engine."""
