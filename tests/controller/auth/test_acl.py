"""The generated mosquitto configuration and ACL."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.auth.acl import BrokerFiles, BrokerPolicy, acl_text, mosquitto_config
from controller.demo.broker import BrokerError, InProcessBroker, MosquittoBroker
from controller.settings import MqttSettings


def test_acl_gives_devices_only_their_own_topics():
    text = acl_text(BrokerPolicy(prefix="fleet/v1"))
    patterns = [line for line in text.splitlines() if line.startswith("pattern")]
    assert patterns == [
        "pattern write fleet/v1/dev/%u/state",
        "pattern write fleet/v1/dev/%u/health",
        "pattern write fleet/v1/dev/%u/det",
        "pattern write fleet/v1/dev/%u/evt",
        "pattern write fleet/v1/dev/%u/ack",
        "pattern write fleet/v1/dev/%u/snap",
        "pattern read fleet/v1/dev/%u/cmd",
        "pattern read fleet/v1/bundle/+/chunk",
    ]
    assert "user controller.edgefleet\ntopic readwrite #\n" in text


def test_config_requires_certificates_and_refuses_anonymous(tmp_path):
    conf = mosquitto_config(BrokerPolicy(prefix="p", max_packet_size=4096), BrokerFiles(tmp_path))
    lines = conf.splitlines()
    assert "allow_anonymous false" in lines
    assert "max_packet_size 4096" in lines
    assert lines.count("require_certificate true") == 2
    assert lines.count("use_identity_as_username true") == 2
    assert lines.count("use_username_as_clientid true") == 1  # devices only
    assert f"crlfile {tmp_path / 'crl.pem'}" in lines
    assert not any(line.startswith("password_file") for line in lines)


def test_a_plain_broker_listens_on_loopback_only(tmp_path):
    with pytest.raises(BrokerError, match="tls_required"):
        MosquittoBroker(workdir=tmp_path / "b", host="0.0.0.0")
    with pytest.raises(BrokerError, match="tls_required"):
        InProcessBroker(host="192.0.2.7")


def test_controller_settings_refuse_a_plain_broker_beyond_loopback():
    with pytest.raises(ValidationError, match="tls_required"):
        MqttSettings(host="broker.example")
    with pytest.raises(ValidationError, match="tls_incomplete"):
        MqttSettings(host="127.0.0.1", ca_file=Path("ca.pem"), cert_file=Path("c.pem"))
    tls = MqttSettings(
        host="broker.example",
        ca_file=Path("ca.pem"),
        cert_file=Path("c.pem"),
        key_file=Path("c.key"),
    )
    assert tls.tls
    assert not MqttSettings(host="localhost").tls
