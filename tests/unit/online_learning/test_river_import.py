"""River in a worker without scikit-learn (online_learning/river_import.py): the detectors and every learner work,
scikit-learn is not loaded by them, and stays importable."""

from __future__ import annotations

import doctest
import subprocess
import sys
import textwrap

from online_learning import river_import

USE_RIVER_LIKE_A_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import pandas as pd
    from models.demo import CLASS_NAMES, FEATURE_NAMES
    from online_learning.learner import Learner
    from online_learning.snapshots import dumps_state, loads_state
    from online_learning.specs import REGISTRY
    from streams.drift.detectors import ConceptDriftMonitor

    rng = np.random.default_rng(1)
    monitor = ConceptDriftMonitor()
    scores = rng.random(3000)
    labels = np.where(np.arange(3000) < 1500, rng.random(3000) < scores, rng.random(3000) < 1 - scores)
    assert monitor.update_many(scores, labels), "no concept drift detected"
    X = pd.DataFrame(rng.random((64, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    for name, spec in sorted(REGISTRY.items()):
        classes = CLASS_NAMES if spec.task == "binary" else None
        learner = Learner(spec, list(FEATURE_NAMES), classes=classes)
        first = X.iloc[:, 0]
        learner.learn_many(X, [CLASS_NAMES[v > 0.5] for v in first] if classes else first.tolist())
        learner.flush()
        restored = Learner(spec, list(FEATURE_NAMES), classes=classes, model=loads_state(dumps_state(learner.state())))
        assert np.array_equal(restored.predict_many(X).scores, learner.predict_many(X).scores), name
        learner.close()
        restored.close()
    print("sklearn" in sys.modules)
    import sklearn  # noqa: F401 - importable afterwards, for the commands that train
    print("sklearn" in sys.modules)
""")


def test_detectors_and_learners_run_without_loading_sklearn() -> None:
    out = subprocess.run([sys.executable, "-c", USE_RIVER_LIKE_A_WORKER], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "True"]


def test_sklearn_already_loaded_is_left_alone() -> None:
    import sklearn

    with river_import.river_without_sklearn():
        assert sys.modules["sklearn"] is sklearn
    assert sys.modules["sklearn"] is sklearn


def test_docstring_examples() -> None:
    result = doctest.testmod(river_import)
    assert result.attempted > 0 and result.failed == 0
