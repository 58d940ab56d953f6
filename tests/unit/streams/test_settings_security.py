"""Security settings: environment -> librdkafka config and Faust (aiokafka) credentials, and the SASL
password staying out of everything that gets printed or logged."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys

import certifi
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.cli.demo import stop_worker, wait_ready
from streams.settings import Settings
from streams.worker.app import _faust_credentials
from tests.conftest import free_port

SECRET = "s3cr3t-Pa55word-do-not-log"
CA = certifi.where()  # any real PEM bundle will do as the CA file


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Set STREAMSCORE_* variables for one test (and nothing from the outer environment)."""
    for key in list(os.environ):
        if key.startswith("STREAMSCORE_"):
            monkeypatch.delenv(key)

    def set_env(**values: str) -> Settings:
        for key, value in values.items():
            monkeypatch.setenv(f"STREAMSCORE_{key.upper()}", value)
        return Settings()

    return set_env


CASES = {
    "PLAINTEXT": (
        {},
        {"security.protocol": "PLAINTEXT"},
        {"security_protocol": "PLAINTEXT"},
    ),
    "SSL": (
        {"ssl_cafile": CA},
        {"security.protocol": "SSL", "ssl.ca.location": CA},
        {"security_protocol": "SSL"},
    ),
    "SASL_PLAINTEXT": (
        {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc-score", "sasl_password": SECRET},
        {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc-score",
         "sasl.password": SECRET},
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
         "sasl_plain_username": "svc-score", "sasl_plain_password": SECRET, "ssl_context": None},
    ),
    "SASL_SSL": (
        {"sasl_username": "svc-score", "sasl_password": SECRET, "ssl_cafile": CA},  # mechanism defaults to PLAIN
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "svc-score",
         "sasl.password": SECRET, "ssl.ca.location": CA},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "svc-score",
         "sasl_plain_password": SECRET},
    ),
}


@pytest.mark.parametrize("protocol", list(CASES))
def test_env_gives_matching_librdkafka_and_faust_security(env, protocol):
    extra, librdkafka, aiokafka = CASES[protocol]
    s = env(broker="kafka://k0:9093,k1:9093", security_protocol=protocol, **extra)

    assert s.kafka_client_config() == {"bootstrap.servers": "k0:9093,k1:9093", **librdkafka}
    auth = credentials_to_aiokafka_auth(_faust_credentials(s))  # what Faust hands to aiokafka
    assert {k: auth[k] for k in aiokafka} == aiokafka
    if protocol.endswith("SSL"):  # TLS verifies the broker against exactly the configured CA file
        context = auth["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        with open(CA) as fh:
            assert context.cert_store_stats()["x509_ca"] == fh.read().count("BEGIN CERTIFICATE")


def test_sasl_settings_are_ignored_without_a_sasl_protocol(env):
    # A password left in the environment must not reach librdkafka on a PLAINTEXT or SSL connection.
    for protocol in ("PLAINTEXT", "SSL"):
        s = env(security_protocol=protocol, sasl_username="u", sasl_password=SECRET, sasl_mechanism="PLAIN")
        assert not [k for k in s.kafka_client_config() if k.startswith("sasl.")]
        assert credentials_to_aiokafka_auth(_faust_credentials(s))["security_protocol"] == protocol


def test_password_never_appears_in_repr_str_or_model_dump(env):
    s = env(security_protocol="SASL_SSL", sasl_username="svc-score", sasl_password=SECRET)
    printed = [repr(s), str(s), str(s.model_dump()), s.model_dump_json(), f"{s!r}", repr(_faust_credentials(s))]
    for text in printed:
        assert SECRET not in text
    assert "svc-score" in repr(s)  # the rest is still shown
    assert s.kafka_client_config()["sasl.password"] == SECRET  # but the clients get it


def test_password_reaches_child_processes_through_as_env(env, monkeypatch):
    parent = env(security_protocol="SASL_SSL", sasl_username="u", sasl_password=SECRET)
    child_env = parent.as_env()
    assert child_env["STREAMSCORE_SASL_PASSWORD"] == SECRET
    for key, value in child_env.items():
        monkeypatch.setenv(key, value)
    assert Settings().sasl_password == SECRET and Settings() == parent


def test_password_file_is_read_and_handed_on_as_the_file(env, tmp_path, monkeypatch):
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SECRET + "\n")  # as `echo` or `kubectl create secret --from-file` leave it
    s = env(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password_file=str(secret_file))
    assert s.sasl_password == SECRET
    assert s.kafka_client_config()["sasl.password"] == SECRET
    assert credentials_to_aiokafka_auth(_faust_credentials(s))["sasl_plain_password"] == SECRET
    child_env = s.as_env()
    assert "STREAMSCORE_SASL_PASSWORD" not in child_env  # the child reads the file itself
    assert child_env["STREAMSCORE_SASL_PASSWORD_FILE"] == str(secret_file)
    assert SECRET not in str(child_env)
    for key, value in child_env.items():
        monkeypatch.setenv(key, value)
    assert Settings().sasl_password == SECRET


def test_password_and_password_file_together_are_refused(env, tmp_path):
    secret_file = tmp_path / "p"
    secret_file.write_text("other")
    with pytest.raises(ValueError, match="not both"):
        env(sasl_password=SECRET, sasl_password_file=str(secret_file))


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["faust"])  # the start-up path is the same for both engines
def test_worker_start_logs_do_not_contain_the_password(flow):
    # PLAINTEXT against the embedded broker, with SASL settings present as a mis-configured deployment
    # might have them: the worker must start, and print neither the password nor its settings dump.
    settings = flow.settings.model_copy(update={
        "web_port": free_port(), "sasl_username": "svc-score", "sasl_password": SECRET, "sasl_mechanism": "PLAIN",
    })
    log_path = flow.log_dir / "worker-debug.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli.main", "worker", "--loglevel", "debug"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **settings.as_env()})
    try:
        assert wait_ready(settings.web_port, timeout=60, proc=proc), log_path.read_text()[-3000:]
    finally:
        stop_worker(proc)
    text = log_path.read_text(errors="replace")
    assert "Worker]: Starting..." in text and "[DEBUG]" in text  # start-up was logged, in full detail
    assert SECRET not in text


# --- every secret, not only the SASL password ---------------------------------------------------------------
def test_every_secret_looking_setting_is_declared_secret():
    from streams.settings import SECRET_FIELDS

    looks_secret = {name for name in Settings.model_fields
                    if name.endswith(("password", "_key", "secret", "token")) and not name.endswith("_file")}
    assert looks_secret <= set(SECRET_FIELDS), looks_secret - set(SECRET_FIELDS)


@pytest.mark.parametrize("name", ["sasl_password", "signing_key", "snapshot_hmac_key"])
def test_secrets_never_appear_in_repr_dumps_or_scopes_but_reach_children(name, monkeypatch):
    from streams.settings import SECRET_FIELDS

    assert name in SECRET_FIELDS
    field = Settings.model_fields[name]
    assert field.repr is False and field.exclude is True
    value = "s3cr3t-" + name.replace("_", "-") + "-0123456789"
    s = Settings(**{name: value, "security_protocol": "SASL_SSL"})
    for text in (repr(s), str(s), json.dumps(s.model_dump(mode="json")), s.model_dump_json(),
                 repr(s.kafka), s.kafka.model_dump_json(), repr(s.scoring)):
        assert value not in text
    assert s.as_env()[f"STREAMSCORE_{name.upper()}"] == value  # handed on to the archiver child, explicitly
    monkeypatch.setenv(f"STREAMSCORE_{name.upper()}", value)
    assert getattr(Settings(), name) == value
