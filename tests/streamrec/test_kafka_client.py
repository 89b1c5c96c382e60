"""Kafka security settings reach kafka-python and Faust the same way."""

from __future__ import annotations

import pytest
from faust.auth import SASLCredentials
from faust.types.auth import AuthProtocol, SASLMechanism

from stream.app import faust_credentials
from streamrec.errors import ConfigError
from streamrec.kafka_client import kafka_python_options
from streamrec.settings import Settings


def settings(**fields: object) -> Settings:
    return Settings(kafka_bootstrap="k1:9093,k2:9093", redis_url="redis://r:6379/0", **fields)  # type: ignore[arg-type]


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert kafka_python_options(settings()) == {
        "bootstrap_servers": ["k1:9093", "k2:9093"],
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(settings()) is None


def test_sasl_ssl_gives_both_clients_the_same_credentials() -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="streamrec",
        kafka_sasl_password="s3cret",
    )
    options = kafka_python_options(s)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "streamrec",
        "s3cret",
    )
    assert options["ssl_context"] is not None
    credentials = faust_credentials(s)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert credentials.mechanism is SASLMechanism.SCRAM_SHA_512
    assert "s3cret" not in repr(s)


def test_sasl_without_a_username_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="SASL_USERNAME"):
        kafka_python_options(settings(kafka_security_protocol="SASL_PLAINTEXT"))


def test_unreadable_tls_files_are_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="TLS files"):
        kafka_python_options(
            settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent.pem")
        )


def test_secrets_survive_the_trip_to_a_child_process() -> None:
    s = settings(kafka_sasl_password="s3cret")
    env = s.to_env()
    assert env["STREAMREC_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert "STREAMREC_ARCHIVE_DIR" not in env  # None stays unset, not the string "None"
