"""How every Kafka client of streamrec connects: brokers and security from `Settings`.

kafka-python (producer CLI, topic admin) takes `kafka_python_options`; Faust
(on aiokafka) takes the same through `ssl_context` and the stream app's
credentials, so one set of `STREAMREC_KAFKA_*` variables serves both.
"""

from __future__ import annotations

import ssl
from typing import Any

from streamrec.errors import ConfigError
from streamrec.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.kafka_security_protocol:
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if settings.kafka_ssl_certfile:
            keyfile = str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
            context.load_cert_chain(str(settings.kafka_ssl_certfile), keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"Kafka TLS files could not be loaded: {exc}") from exc
    return context


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer and admin client."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": protocol,
    }
    if protocol.startswith("SASL"):
        if not settings.kafka_sasl_username:
            raise ConfigError(f"STREAMREC_KAFKA_SASL_USERNAME is required with {protocol}")
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options
