"""The worker: wires the Faust app, the engine and every capability lane, and serves metrics and health."""
