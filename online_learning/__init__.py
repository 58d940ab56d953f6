"""streamscore: online_learning."""
