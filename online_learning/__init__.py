"""River online learners: specs, the learner wrapper, prequential metrics, the labels join and signed snapshots
loaded through an exact class allowlist."""
