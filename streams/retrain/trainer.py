"""Train a candidate on a training dataset, register it as challenger, route it in shadow; promote or retire it.

The recipe is the champion's own (its model card's ``recipe``), so a retrain changes the data and nothing else;
a champion without one (trained before recipes existed) gets the demo recipe. The candidate's card names the
training dataset (``training_data_version``), the champion it retrains (``parent_version``) and the recipe hash;
its ``created_at`` is the newest input's time, so the artifact bytes depend on recipe and data only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.card import ModelCard
from models.recipe import Recipe
from models.registry import CHALLENGER, ModelRegistry, ModelVersion
from models.train_demo import demo_recipe
from models.training import train
from schemas.model_refs import CHAMPION
from schemas.routes import RouteSpec
from streams.retrain.dataset import TrainingDataset

__all__ = ["finish", "recipe_of", "start_shadow", "train_candidate"]


def recipe_of(registry: ModelRegistry, name: str) -> tuple[Recipe, ModelVersion]:
    """The champion of ``name`` and the recipe to retrain it with."""
    champion = registry.resolve(name)
    card = ModelCard.load(registry.artifact_dir(champion))
    return (card.recipe or demo_recipe()), champion


def _next_version(registry: ModelRegistry, name: str) -> str:
    numbers = [int(v) for v in registry.state.model(name).versions if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def train_candidate(registry: ModelRegistry, ds: TrainingDataset, X: np.ndarray, y: np.ndarray, work_dir: Path,
                    ) -> tuple[ModelVersion, bool]:
    """(the registered candidate, whether it was trained now); a dataset already trained on is not trained twice
    (a redelivered request after a crash finds its own candidate)."""
    name = ds.model_name
    registry.reload()
    for mv in registry.state.model(name).versions.values():
        if mv.training_data_version == ds.id:
            return mv, False
    recipe, champion = recipe_of(registry, name)
    version = _next_version(registry, name)
    out = work_dir / name / version
    created = (datetime.fromtimestamp(ds.max_timestamp_ms / 1000, timezone.utc) if ds.max_timestamp_ms is not None
               else None)
    train(recipe, X, y, out, name=name, version=version, training_data_version=ds.id,
          parent_version=champion.version, created_at=created, force=True)  # our own work dir: a crashed run's files
    registry.register(out, aliases=[CHALLENGER])
    return registry.resolve(name, version), True


def start_shadow(registry: ModelRegistry, route_topic: str, name: str) -> None:
    """Route ``route_topic``: the champion publishes, the challenger scores every event aside (shadow topic)."""
    spec = RouteSpec(policy="shadow", model=name, baseline=CHAMPION, candidate=CHALLENGER)
    registry.set_route(route_topic, spec.model_dump(mode="json", exclude_defaults=True),
                       reason=f"retrain: {name}@{registry.resolve(name, CHALLENGER).version} in shadow",
                       unless=lambda current: current == spec.model_dump(mode="json", exclude_defaults=True))


def finish(registry: ModelRegistry, route_topic: str, name: str, version: str, promote: bool) -> None:
    """Promote ``version`` to champion (or not), route everything to the champion, drop the challenger alias.

    Each step is skipped when already done, so a restart half-way completes it. The route changes before the
    alias goes: a route naming a missing alias would be refused by every worker.
    """
    registry.reload()
    if promote and registry.resolve(name).version != version:
        registry.promote(name, version)
    single = RouteSpec(policy="single", model=name).model_dump(mode="json", exclude_defaults=True)
    registry.set_route(route_topic, single, reason=f"retrain: {name}@{version} {'promoted' if promote else 'rejected'}",
                       unless=lambda current: current == single)
    if registry.state.model(name).aliases.get(CHALLENGER) == version:  # not when already retired
        registry.unalias(name, CHALLENGER)
