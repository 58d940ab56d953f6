"""How a registered model is named: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (MLflow's URIs) and ``NAME@REF``.

Pure text, no registry: kept here, below the settings and route specs that validate references, so that
neither has to import the registry (which loads onnxruntime). Resolution is ``models.registry``'s.

Accepted forms:

* ``models:/NAME@ALIAS``: exactly that alias (``champion``, ``challenger``, ...), as in MLflow;
* ``models:/NAME/VERSION``: exactly that version;
* ``models:/NAME``: the champion;
* ``NAME@REF``: the house form (``demo-risk@2``): an alias, else a version (as ``ModelState.resolve``);
* ``NAME``: the champion (where a model is named on its own).

``NAME/VERSION`` without the scheme is not accepted: it is also a relative directory (``replay --model``).

>>> parse_model_ref("models:/demo-risk@challenger")
ModelRef(name='demo-risk', version=None, alias='challenger', ref=None)
>>> parse_model_ref("models:/demo-risk/3").target, parse_model_ref("models:/demo-risk").target
('3', 'champion')
>>> str(parse_model_ref("demo-risk@2")), str(parse_model_ref("demo-risk", "models:/demo-risk/2"))
('demo-risk@2', 'models:/demo-risk/2')
>>> parse_model_ref("models:/demo-risk/3/4")
Traceback (most recent call last):
...
schemas.model_refs.ModelRefError: model reference 'models:/demo-risk/3/4' is not one of models:/NAME@ALIAS, \
models:/NAME/VERSION, models:/NAME (the champion), NAME@VERSION_OR_ALIAS, NAME; names, versions and aliases are \
letters, digits, '.', '_', '-' (at most 100, starting with a letter or digit)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CHAMPION", "MODELS_SCHEME", "NAME_PATTERN", "ModelRef", "ModelRefError", "is_model_ref", "model_name",
           "parse_model_ref"]

MODELS_SCHEME = "models:/"
CHAMPION = "champion"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # model names, versions and aliases alike
FORMS = ("models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME (the champion), NAME@VERSION_OR_ALIAS, NAME; "
         "names, versions and aliases are letters, digits, '.', '_', '-' (at most 100, starting with a letter or "
         "digit)")


class ModelRefError(ValueError):
    """A model reference that is none of the accepted forms; one line, listing them."""


@dataclass(frozen=True)
class ModelRef:
    """A model and, at most one of: an exact ``version``, an exact ``alias``, or a ``ref`` (alias, else version).

    None of the three: the model's champion.
    """

    name: str
    version: str | None = None
    alias: str | None = None
    ref: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether a version, alias or ref was given (else: the champion by default)."""
        return (self.version or self.alias or self.ref) is not None

    @property
    def target(self) -> str:
        """The version or alias this names (``champion`` when none was given)."""
        return self.version or self.alias or self.ref or CHAMPION

    def __str__(self) -> str:
        if self.version is not None:
            return f"{MODELS_SCHEME}{self.name}/{self.version}"
        if self.alias is not None:
            return f"{MODELS_SCHEME}{self.name}@{self.alias}"
        if self.ref is not None:
            return f"{self.name}@{self.ref}"
        return f"{MODELS_SCHEME}{self.name}"

    def with_ref(self, other: str | ModelRef | None) -> ModelRef:
        """This model with ``other`` (a version or alias given separately, or a reference of this same model).

        Refused when ``other`` names another model, or when both name a version/alias and they differ.
        """
        if other is None:
            return self
        theirs = other if isinstance(other, ModelRef) else (
            parse_model_ref(other) if is_model_ref(other) else ModelRef(self.name, ref=_part(other, str(other))))
        if theirs.name != self.name:
            raise ModelRefError(f"{other} names model {theirs.name!r}, not {self.name!r}")
        if not theirs.pinned:
            return self
        if not self.pinned:
            return theirs
        if self.target == theirs.target and (self == theirs or self.ref is not None or theirs.ref is not None):
            return theirs if self.ref is not None else self  # the exact form wins over the house form
        raise ModelRefError(f"{self} already names {self.target!r}; give the version or alias once, not also "
                            f"{theirs.target!r}")


def is_model_ref(text: str) -> bool:
    """Whether ``text`` is written as a reference (``models:/...`` or ``NAME@REF``) rather than a bare name or ref."""
    return text.startswith(MODELS_SCHEME.rstrip("/")) or "@" in text


def _part(value: str, text: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ModelRefError(f"model reference {text!r} is not one of {FORMS}")
    return value


def parse_model_ref(text: str, ref: str | ModelRef | None = None) -> ModelRef:
    """Parse one of the accepted forms (module docstring); ``ref``: a version or alias given separately."""
    if not isinstance(text, str):
        raise ModelRefError(f"model reference {text!r} is not one of {FORMS}")
    if text.startswith("models://"):  # MLflow's models://<profile>/...: a remote registry
        raise ModelRefError(f"model reference {text!r}: a registry profile (models://...) is not supported, the "
                            f"registry is STREAMSCORE_REGISTRY_DIR; write one of {FORMS}")
    if text.startswith(MODELS_SCHEME):
        path = text[len(MODELS_SCHEME):]
        if "@" in path:
            name, _, alias = path.partition("@")
            parsed = ModelRef(_part(name, text), alias=_part(alias, text))
        elif "/" in path:
            name, _, version = path.partition("/")
            parsed = ModelRef(_part(name, text), version=_part(version, text))
        else:
            parsed = ModelRef(_part(path, text))
    elif "@" in text:
        name, _, either = text.partition("@")
        parsed = ModelRef(_part(name, text), ref=_part(either, text))
    else:
        parsed = ModelRef(_part(text, text))
    return parsed.with_ref(ref)


def model_name(text: str) -> str:
    """The model a name-only reference (``NAME`` or ``models:/NAME``) names; refused when it names a version.

    >>> model_name("models:/demo-risk"), model_name("demo-risk")
    ('demo-risk', 'demo-risk')
    """
    parsed = parse_model_ref(text)
    if parsed.pinned:
        raise ModelRefError(f"{text!r} names {parsed.target!r} of {parsed.name}; here only the model is named: "
                            f"{parsed.name} or {MODELS_SCHEME}{parsed.name}")
    return parsed.name
