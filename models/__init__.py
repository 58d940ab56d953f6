"""Models the worker serves: the one ``Scorer`` interface, verified ONNX scoring, model cards, the demo model and
its training recipe, serving leases, the model registry (versions, aliases, signed change records) and composites."""
