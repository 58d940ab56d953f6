"""Drift monitoring: reference profiles, statistics, the drift lane, debounced alerts, concept-drift detectors,
reports and the views behind `streamscore tail drift` / `drift status`."""
