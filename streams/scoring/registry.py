"""The worker's Schema Registry codecs, built once per process from the settings (docs/operations.md).

With ``STREAMSCORE_SCHEMA_REGISTRY_URL`` unset both are None and nothing registry-related is imported; set,
every lane that decodes input (scoring, the online learner, the drift lane) shares one
``RegistrySchemaResolver`` (one lookup per schema id for the whole worker) and the prediction lanes share one
``RegistryAvroEncoder`` when ``STREAMSCORE_AVRO_PREDICTIONS`` is on.

>>> from streams.settings import Settings
>>> schema_resolver(Settings()) is None and prediction_encoder(Settings()) is None
True
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.schema_registry import RegistryAvroEncoder, RegistrySchemaResolver

__all__ = ["prediction_encoder", "schema_resolver"]


def _key(settings: Any) -> tuple[str, str | None, Path | None] | None:
    url = getattr(settings, "schema_registry_url", None)
    if url is None:
        return None
    return url, settings.schema_registry_basic_auth, settings.schema_registry_ca_file


@functools.cache
def _client(url: str, basic_auth: str | None, ca_file: Path | None) -> Any:
    from schemas.schema_registry import make_client  # httpx + authlib, ~230 ms of imports: only with a registry

    return make_client(url, basic_auth=basic_auth, ca_file=ca_file)


@functools.cache
def _resolver(url: str, basic_auth: str | None, ca_file: Path | None) -> RegistrySchemaResolver:
    from schemas.schema_registry import RegistrySchemaResolver  # heavy, as above

    return RegistrySchemaResolver(_client(url, basic_auth, ca_file))


@functools.cache
def _encoder(url: str, basic_auth: str | None, ca_file: Path | None, strategy: str,
             auto_register: bool) -> RegistryAvroEncoder:
    from schemas.schema_registry import RegistryAvroEncoder  # heavy, as above

    return RegistryAvroEncoder(_client(url, basic_auth, ca_file), "prediction", strategy=strategy,  # type: ignore[arg-type]
                               auto_register=auto_register)


def schema_resolver(settings: Any) -> RegistrySchemaResolver | None:
    """The process's resolver of registry schema ids (None without ``schema_registry_url``)."""
    key = _key(settings)
    return None if key is None else _resolver(*key)


def prediction_encoder(settings: Any) -> RegistryAvroEncoder | None:
    """The process's Avro encoder of predictions (None unless ``avro_predictions``, which needs the URL)."""
    key = _key(settings)
    if key is None or not getattr(settings, "avro_predictions", False):
        return None
    return _encoder(*key, settings.schema_registry_subject_strategy, settings.schema_registry_auto_register)
