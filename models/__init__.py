"""streamscore: models."""
