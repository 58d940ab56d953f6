"""Routing between model versions (single, A/B, canary, shadow, bandits) and the watcher that follows the model
registry's control topic and swaps the routing table between micro-batches."""
