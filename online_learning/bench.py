"""Prequential throughput of the learners, in process (no Kafka): events scored *and* learned per second.

Per batch of ``batch`` demo events: build the pandas frame from a float matrix (as the scoring lane
does), ``predict_many``, then ``learn_many`` with the true labels. A background learner (Hoeffding
tree) only enqueues in ``learn_many``; its clock stops after ``flush()``, when every event is learned,
so the rate is scored-and-learned for both kinds.

    python -m online_learning.bench [N]

>>> rows = bench_learners(600, learners=("logreg",))
>>> rows[0]["learner"], rows[0]["learned"], rows[0]["events_per_s"] > 0
('logreg', 600, True)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
from online_learning.learner import Learner
from online_learning.specs import get_spec


def bench_learners(n: int, batch: int = 256, seed: int = 3,
                   learners: Sequence[str] = ("logreg", "hoeffding")) -> list[dict]:
    """One row per learner: events/s (prequential predict-then-learn), batch scoring time, and how well
    the predictions did (accuracy, log loss) on the demo stream ``make_dataset(seed, n)``."""
    X, y = make_dataset(seed, n)
    labels = [CLASS_NAMES[int(v)] for v in y]
    results = []
    for name in learners:
        learner = Learner(get_spec(name), FEATURE_NAMES, classes=CLASS_NAMES)
        scores = np.empty(n)
        predict_s = 0.0
        started = time.perf_counter()
        for i in range(0, n, batch):
            frame = pd.DataFrame(X[i:i + batch], columns=list(FEATURE_NAMES))
            t = time.perf_counter()
            scores[i:i + batch] = learner.predict_many(frame).scores
            predict_s += time.perf_counter() - t
            learner.learn_many(frame, labels[i:i + batch])
        learner.flush()
        seconds = time.perf_counter() - started
        learner.close()
        p = np.clip(scores, 1e-15, 1 - 1e-15)
        results.append({
            "learner": name,
            "mode": "mini-batch" if learner.minibatch else "background",
            "batch": batch,
            "events": n,
            "learned": learner.learned,
            "seconds": round(seconds, 3),
            "events_per_s": round(n / seconds),
            "predict_ms_per_batch": round(1000 * predict_s / math.ceil(n / batch), 3),
            "accuracy": round(float(np.mean((scores > 0.5) == (y == 1))), 4),
            "log_loss": round(float(-np.mean(np.where(y == 1, np.log(p), np.log(1 - p)))), 4),
        })
    return results


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    for row in bench_learners(n):
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
