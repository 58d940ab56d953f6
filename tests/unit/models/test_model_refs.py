"""Model references: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME`` and ``NAME@REF``.

The parser (schemas.model_refs), its resolution by the registry (every entry point that takes a model), route
specs written with references, the routing table a worker builds from them, and ``models diff``'s pair.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.composite import CompositeSpec, Part
from models.demo import FEATURE_NAMES, sample_events
from models.registry import BadModelRef, ModelRegistry, RegistryError, read_log
from models.registry_diff import diff_registered, version_pair
from models.train_demo import train_demo_model
from schemas.model_refs import FORMS, ModelRef, ModelRefError, model_name, parse_model_ref
from schemas.routes import RouteSpec

ROOT = Path(__file__).resolve().parents[3]


# --- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected", "target"), [
    ("models:/demo-risk@challenger", ModelRef("demo-risk", alias="challenger"), "challenger"),
    ("models:/demo-risk@champion", ModelRef("demo-risk", alias="champion"), "champion"),
    ("models:/demo-risk/3", ModelRef("demo-risk", version="3"), "3"),
    ("models:/demo-risk/river-1.b_2", ModelRef("demo-risk", version="river-1.b_2"), "river-1.b_2"),
    ("models:/demo-risk", ModelRef("demo-risk"), "champion"),
    ("demo-risk@2", ModelRef("demo-risk", ref="2"), "2"),
    ("demo-risk@challenger", ModelRef("demo-risk", ref="challenger"), "challenger"),
    ("demo-risk", ModelRef("demo-risk"), "champion"),
])
def test_every_accepted_form_parses_and_prints_back(text, expected, target):
    parsed = parse_model_ref(text)
    assert parsed == expected and parsed.target == target
    assert parsed.pinned == (text not in ("models:/demo-risk", "demo-risk"))
    assert parse_model_ref(str(parsed)) == parsed  # str() is a reference again (bare NAME prints as models:/NAME)


@pytest.mark.parametrize("text", [
    "", "models:/", "models:/demo-risk/", "models:/demo-risk@", "models:/@champion", "models:/demo-risk/3/4",
    "models:/demo-risk@a@b", "models:/demo-risk/3@champion", "models:demo-risk", "demo-risk/3", "runs:/abc/model",
    "Models:/demo-risk/3", "demo risk", "@2", "demo-risk@", "demo-risk@2@3", "-demo-risk", "models:/" + "x" * 101,
    "models:/demo-risk/../../etc",
])
def test_anything_else_is_refused_in_one_line_listing_the_forms(text):
    with pytest.raises(ModelRefError) as exc:
        parse_model_ref(text)
    message = str(exc.value)
    assert "\n" not in message and FORMS in message and repr(text) in message
    assert isinstance(exc.value, ValueError)


def test_a_remote_registry_profile_gets_its_own_reason():
    with pytest.raises(ModelRefError, match=r"registry profile \(models://\.\.\.\) is not supported"):
        parse_model_ref("models://databricks/demo-risk/1")


def test_a_separate_ref_combines_with_the_reference_or_conflicts():
    assert parse_model_ref("demo-risk", "2") == ModelRef("demo-risk", ref="2")
    assert parse_model_ref("models:/demo-risk", "models:/demo-risk@challenger") == ModelRef("demo-risk",
                                                                                             alias="challenger")
    assert parse_model_ref("models:/demo-risk/2", "2") == ModelRef("demo-risk", version="2")  # the exact form wins
    assert parse_model_ref("demo-risk@2", "models:/demo-risk/2") == ModelRef("demo-risk", version="2")
    assert parse_model_ref("models:/demo-risk/2", None) == ModelRef("demo-risk", version="2")
    with pytest.raises(ModelRefError, match="already names '2'; give the version or alias once, not also 'champion'"):
        parse_model_ref("models:/demo-risk/2", "champion")
    with pytest.raises(ModelRefError, match="names model 'other', not 'demo-risk'"):
        parse_model_ref("demo-risk", "models:/other/2")
    with pytest.raises(ModelRefError, match="already names"):  # same text, one a version, the other an alias
        parse_model_ref("models:/demo-risk/x", "models:/demo-risk@x")


def test_model_name_takes_the_model_only():
    assert model_name("models:/demo-risk") == model_name("demo-risk") == "demo-risk"
    for text in ("models:/demo-risk/2", "models:/demo-risk@challenger", "demo-risk@2"):
        with pytest.raises(ModelRefError, match="here only the model is named: demo-risk or models:/demo-risk"):
            model_name(text)


def test_settings_and_route_specs_parse_refs_without_loading_the_registry():
    # schemas.routes is imported by the settings: the parser must not pull in onnxruntime (the registry does)
    code = ("import sys, schemas.routes; print(sorted(m for m in ('onnxruntime', 'models.registry', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# --- resolution by the registry ------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("versions")
    for version, seed in [("1", 7), ("2", 8), ("3", 9)]:
        train_demo_model(root / version, seed=seed, n=1500, version=version)
    return {v: root / v for v in ("1", "2", "3")}


@pytest.fixture
def registry(tmp_path: Path, versions: dict[str, Path]) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry", FEATURE_NAMES)
    reg.register(versions["1"])                           # champion
    reg.register(versions["2"], aliases=["challenger"])
    reg.register(versions["3"])
    return reg


@pytest.mark.parametrize(("name", "ref", "version"), [
    ("models:/demo-risk@challenger", None, "2"),
    ("models:/demo-risk@champion", None, "1"),
    ("models:/demo-risk/3", None, "3"),
    ("models:/demo-risk", None, "1"),
    ("demo-risk@challenger", None, "2"),
    ("demo-risk@3", None, "3"),
    ("demo-risk", None, "1"),
    ("demo-risk", "challenger", "2"),
    ("demo-risk", "3", "3"),
    ("demo-risk", "models:/demo-risk/3", "3"),
    ("models:/demo-risk", "models:/demo-risk@challenger", "2"),
])
def test_the_registry_resolves_and_loads_every_form(registry, name, ref, version):
    assert registry.resolve(name, ref).version == version
    assert registry.state.resolve(name, ref).version == version
    scorer = registry.load_scorer(name, ref)
    assert (scorer.name, scorer.version) == ("demo-risk", version)
    full = parse_model_ref(name, ref)
    assert registry.state.model("demo-risk").resolve(full).version == version  # a ModelRef as well
    if ref is None and full.pinned:
        assert registry.state.model("demo-risk").resolve(name).version == version  # a reference string as a ref


def test_exact_forms_are_exact_and_say_how_to_write_the_other(registry):
    with pytest.raises(RegistryError, match=r"no alias '2'; aliases .* \(a version is written models:/demo-risk/"
                                            r"VERSION\)"):
        registry.resolve("models:/demo-risk@2")
    with pytest.raises(RegistryError, match=r"no version 'challenger'; versions \['1', '2', '3'\] \(an alias is "
                                            r"written models:/demo-risk@ALIAS\)"):
        registry.resolve("models:/demo-risk/challenger")
    with pytest.raises(RegistryError, match="no model 'other' in the registry; registered: \\['demo-risk'\\]"):
        registry.resolve("models:/other/1")
    with pytest.raises(RegistryError, match="names model 'other', not 'demo-risk'"):
        registry.state.model("demo-risk").resolve("models:/other/1")
    with pytest.raises(RegistryError, match="here only the model is named"):
        registry.state.model("models:/demo-risk/2")
    with pytest.raises(BadModelRef, match=FORMS.replace("(", r"\(").replace(")", r"\)")) as exc:
        registry.load_scorer("demo-risk/2")  # no scheme: refused, it is also a relative directory
    assert isinstance(exc.value, ModelRefError) and isinstance(exc.value, RegistryError)  # CLI: exit 2 on either
    with pytest.raises(BadModelRef, match="names model 'other'"):
        registry.promote("demo-risk", "models:/other/2")


def test_an_alias_named_like_a_version_only_the_exact_form_tells_apart(registry):
    registry.promote("demo-risk", "3", alias="1")  # legal, if unwise: alias '1' -> version 3
    assert registry.resolve("demo-risk@1").version == "3"           # the house form: an alias wins
    assert registry.resolve("demo-risk", "1").version == "3"
    assert registry.resolve("models:/demo-risk/1").version == "1"   # exactly the version
    assert registry.resolve("models:/demo-risk@1").version == "3"   # exactly the alias


def test_promote_rollback_alias_and_unalias_take_references(registry):
    registry.promote("models:/demo-risk/2")
    assert registry.state.model("demo-risk").aliases["champion"] == "2"
    registry.promote("models:/demo-risk", "models:/demo-risk/3", alias="challenger")
    registry.promote("demo-risk", "3")  # the plain form is unchanged
    assert registry.state.model("demo-risk").aliases == {"champion": "3", "challenger": "3"}
    registry.rollback("models:/demo-risk", to="models:/demo-risk/1")
    assert registry.state.model("demo-risk").aliases["champion"] == "1"
    registry.promote("demo-risk@3")
    registry.rollback("models:/demo-risk")
    assert registry.state.model("demo-risk").aliases["champion"] == "1"
    registry.unalias("models:/demo-risk", "challenger")
    assert "challenger" not in registry.state.model("demo-risk").aliases
    before = len(list(read_log(registry.log_path)))
    with pytest.raises(RegistryError, match="promote models:/demo-risk: which version?"):
        registry.promote("models:/demo-risk")
    with pytest.raises(RegistryError, match="here only the model is named"):
        registry.rollback("models:/demo-risk/2")
    with pytest.raises(RegistryError, match="already names '2'"):
        registry.promote("models:/demo-risk/2", "3")
    with pytest.raises(RegistryError, match="no version 'nope'"):
        registry.promote("models:/demo-risk/nope")
    assert len(list(read_log(registry.log_path))) == before  # refusals write nothing
    kinds = [(r.change.kind, r.change.alias, r.change.version) for r in read_log(registry.log_path)][3:]
    assert kinds == [("promote", "champion", "2"), ("alias", "challenger", "3"), ("promote", "champion", "3"),
                     ("rollback", "champion", "1"), ("promote", "champion", "3"), ("rollback", "champion", "1"),
                     ("unalias", "challenger", None)]


def test_composite_parts_given_as_references_are_pinned_as_name_and_version(registry):
    spec = CompositeSpec(kind="weighted_average", parts=[
        Part(model="models:/demo-risk", version="models:/demo-risk/1", weight=3),
        Part(model="models:/demo-risk@challenger", version="models:/demo-risk@challenger"),
    ])
    registry.register_composite("models:/demo-risk", "blend-1", spec)
    mv = registry.resolve("models:/demo-risk/blend-1")
    parts = [(p["model"], p["version"], p["weight"]) for p in mv.composite["parts"]]
    assert mv.kind == "composite" and parts == [("demo-risk", "1", 3.0), ("demo-risk", "2", 1.0)]
    assert registry.load_scorer("demo-risk@blend-1").version == "blend-1"


# --- routes ----------------------------------------------------------------------------------------
def test_route_refs_written_as_references_are_stored_short_with_their_model():
    spec = RouteSpec.model_validate({"policy": "ab", "variants": {"models:/demo-risk@champion": 90,
                                                                  "models:/demo-risk/3": 10}, "salt": "x"})
    assert (spec.model, spec.variants) == ("demo-risk", {"champion": 90, "3": 10})
    canary = RouteSpec(policy="canary", model="models:/demo-risk", candidate="demo-risk@challenger")
    assert (canary.model, canary.baseline, canary.candidate) == ("demo-risk", "champion", "challenger")
    bandit = RouteSpec(policy="bandit", arms=["models:/demo-risk/1", "2", "models:/demo-risk"])
    assert (bandit.model, bandit.arms) == ("demo-risk", ["1", "2", "champion"])
    single = RouteSpec(version="models:/demo-risk/2")
    assert (single.model, single.version) == ("demo-risk", "2")
    # stored as it would have been written in the short form: the dump validates to the same spec
    assert RouteSpec.model_validate(spec.model_dump(mode="json", exclude_defaults=True)) == spec
    assert RouteSpec(policy="shadow", candidate="2") == RouteSpec.model_validate(
        {"policy": "shadow", "candidate": "2"})  # short specs are untouched
    assert RouteSpec(policy="shadow", candidate="2").model is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"policy": "ab", "variants": {"models:/a@champion": 1, "models:/b/2": 1}},
     r"the route names models \['a', 'b'\]: a route serves one model"),
    ({"model": "a", "version": "models:/b/2"}, r"the route names models \['a', 'b'\]"),
    ({"model": "models:/a/2"}, "here only the model is named: a or models:/a"),
    ({"policy": "ab", "variants": {"champion": 1, "models:/a@champion": 1}}, "variants name 'champion' twice"),
    ({"version": "models:/a/2/3"}, "is not one of models:/NAME@ALIAS"),
    ({"policy": "canary", "baseline": "models:/a/2", "candidate": "2"}, "baseline and candidate must differ"),
])
def test_route_specs_refuse_mixed_models_and_bad_references(spec, message):
    with pytest.raises(ValueError, match=message):
        RouteSpec.model_validate(spec)


def test_a_worker_builds_its_routing_table_from_references(registry):
    # the watcher's TableBuilder is unchanged: specs and STREAMSCORE_REGISTRY_MODEL as references just work
    from streams.routing.watcher import TableBuilder
    from streams.settings import Settings

    settings = Settings(registry_dir=registry.root, state_dir=registry.root.parent / "state",
                        registry_model="models:/demo-risk",
                        routes={"features": {"policy": "ab", "variants": {"models:/demo-risk/3": 1,
                                                                           "models:/demo-risk@challenger": 1}}})
    registry.set_route("labels-in", RouteSpec(policy="canary", candidate="models:/demo-risk/3").model_dump(
        mode="json", exclude_defaults=True))
    table = TableBuilder(settings, tuple(FEATURE_NAMES)).build(registry.reload(), None)
    assert [s.version for s in table.default.scorers] == ["1"]                      # the champion
    assert [s.version for s in table.routes["features"].scorers] == ["3", "2"]
    assert list(table.routes["features"].policy.arms) == ["3", "challenger"]        # short refs, as before
    assert [s.version for s in table.routes["labels-in"].scorers] == ["1", "3"]


# --- diff ------------------------------------------------------------------------------------------
def test_diff_takes_name_a_b_or_two_references(registry):
    assert version_pair(["demo-risk", "champion", "3"]) == (ModelRef("demo-risk", ref="champion"),
                                                           ModelRef("demo-risk", ref="3"))
    assert version_pair(["models:/demo-risk@champion", "models:/demo-risk/3"]) == (
        ModelRef("demo-risk", alias="champion"), ModelRef("demo-risk", version="3"))
    for args in (["champion", "3"], ["demo-risk"], ["a", "b", "c", "d"], ["models:/demo-risk/1", "3"]):
        with pytest.raises(ModelRefError, match=r"give NAME A B .*, or A B \(two references"):
            version_pair(args)
    with pytest.raises(ModelRefError, match="names model 'other'"):
        version_pair(["demo-risk", "1", "models:/other/2"])
    events = sample_events(5, 300)
    report = diff_registered(registry, *version_pair(["models:/demo-risk@champion", "models:/demo-risk/3"]), events,
                             top=4)
    same = diff_registered(registry, "models:/demo-risk", "demo-risk@1", events, top=4)
    assert (report.a, report.b, report.n, len(report.top)) == ("demo-risk@1", "demo-risk@3", 300, 4)
    assert report.agreement < 1.0 and report.max_abs_diff > 0  # seeds 7 and 9 train different models
    assert (same.agreement, same.max_abs_diff) == (1.0, 0.0)
