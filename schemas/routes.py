"""How one input topic is routed between model versions: ``RouteSpec``, plain data and validation.

Kept apart from the policies so that settings (``STREAMSCORE_ROUTES``) and the CLI can validate a spec
without loading any routing machinery.

>>> RouteSpec(policy="ab", variants={"champion": 90, "challenger": 10}).refs()
['champion', 'challenger']

Refs (and ``model``) may be written as model references (``schemas.model_refs``); they are kept in the short
form, the model they name becoming the route's ``model``:

>>> spec = RouteSpec(policy="canary", candidate="models:/demo-risk/2", baseline="models:/demo-risk@champion")
>>> spec.model, spec.refs()
('demo-risk', ['champion', '2'])
>>> try:
...     RouteSpec(policy="bandit", arms=["1"])
... except ValueError as exc:
...     print(exc.errors()[0]["msg"])
Value error, bandit needs at least two distinct arms
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.model_refs import MODELS_SCHEME, is_model_ref, model_name, parse_model_ref

__all__ = ["PolicyName", "RouteSpec"]

PolicyName = Literal["single", "ab", "canary", "shadow", "bandit"]


class RouteSpec(BaseModel):
    """How one input topic is routed; refs are aliases (champion, challenger, ...) or versions of ``model``.

    A ref may also be written ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME`` (the champion) or
    ``NAME@REF``, and ``model`` as ``models:/NAME``: they are stored as ``model`` plus the short ref.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: PolicyName = "single"
    model: str | None = Field(None, description="Registry model name; default STREAMSCORE_REGISTRY_MODEL.")
    version: str = Field("champion", description="single: the ref that scores everything.")
    variants: dict[str, float] = Field(default_factory=dict, description="ab: ref -> weight (sticky by entity).")
    baseline: str = Field("champion", description="canary and shadow: the ref whose score is published.")
    candidate: str = Field("challenger", description="canary: the ref on trial; shadow: the ref scored aside.")
    percent: float = Field(10.0, ge=0, le=100, description="canary: share of entities sent to the candidate.")
    max_error_rate: float | None = Field(
        None, ge=0, le=1, description="canary: roll back when failures + wrong labels exceed this share.")
    max_latency_ms: float | None = Field(
        None, gt=0, description="canary: roll back when the candidate's mean scoring time per event exceeds this.")
    min_events: int = Field(50, ge=1, description="canary: observations needed before a breach is judged.")
    arms: list[str] = Field(default_factory=list, description="bandit: the refs competing.")
    algorithm: Literal["epsilon_greedy", "thompson"] = "thompson"
    epsilon: float = Field(0.1, ge=0, le=1, description="bandit epsilon_greedy: exploration share.")
    seed: int | None = Field(None, description="bandit: RNG seed (None: fresh entropy).")
    salt: str = Field("", description="ab and canary: hash salt; change it to reshuffle entities.")
    rolled_back: str | None = Field(None, description="canary: set when rolled back (the reason); all to baseline.")

    @model_validator(mode="before")
    @classmethod
    def _short_refs(cls, data: Any) -> Any:
        """Model references -> ``model`` + short refs, so policies, labels and the ``route`` field stay as they were.

        ``models:/NAME/VERSION`` keeps only VERSION: in the short form an alias of that very name would win (a
        registry should not have an alias named like a version).
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("model"), str) and is_model_ref(data["model"]):
            data["model"] = model_name(data["model"])  # models:/NAME; one naming a version is refused
        named: set[str] = set()

        def short(ref: Any) -> Any:
            if not isinstance(ref, str) or not is_model_ref(ref):
                return ref
            parsed = parse_model_ref(ref)
            named.add(parsed.name)
            return parsed.target

        for field in ("version", "baseline", "candidate"):
            if field in data:
                data[field] = short(data[field])
        if isinstance(data.get("arms"), list):
            data["arms"] = [short(a) for a in data["arms"]]
        if isinstance(data.get("variants"), dict):
            variants: dict[Any, Any] = {}
            for ref, weight in data["variants"].items():
                key = short(ref)
                if key in variants:
                    raise ValueError(f"variants name {key!r} twice ({ref!r}); give each ref one weight")
                variants[key] = weight
            data["variants"] = variants
        if named:
            model = data.get("model")
            models = sorted(named | ({model} if model else set()))
            if len(models) > 1:
                raise ValueError(f"the route names models {models}: a route serves one model (its \"model\"; refs "
                                 f"written {MODELS_SCHEME}... must name it)")
            data["model"] = models[0]
        return data

    @model_validator(mode="after")
    def _check(self) -> RouteSpec:
        if self.policy == "ab" and (len(self.variants) < 2 or any(w < 0 for w in self.variants.values())
                                    or sum(self.variants.values()) <= 0):
            raise ValueError("ab needs at least two variants with non-negative weights summing to > 0")
        if self.policy == "bandit" and len(set(self.arms)) < 2:
            raise ValueError("bandit needs at least two distinct arms")
        if self.policy in ("canary", "shadow") and self.baseline == self.candidate:
            raise ValueError(f"{self.policy}: baseline and candidate must differ")
        return self

    def refs(self) -> list[str]:
        """Every ref this spec needs loaded."""
        return {"single": [self.version], "ab": list(self.variants), "canary": [self.baseline, self.candidate],
                "shadow": [self.baseline, self.candidate], "bandit": list(self.arms)}[self.policy]
