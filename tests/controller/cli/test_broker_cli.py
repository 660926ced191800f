"""`edgefleet broker config` writes files a real mosquitto starts with and enforces."""

from __future__ import annotations

import json
import ssl
import threading
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.auth.ca import CertificateAuthority, KeyAndCertificate, write_identity
from controller.cli.main import main
from controller.demo.broker import MosquittoBroker, free_port
from tests.security.pki import make_csr


def _connects(
    port: int, ca: str, cert: Path, key: Path, client_id: str, host: str = "localhost"
) -> bool:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    client.tls_set_context(ctx)
    accepted = threading.Event()

    def on_connect(_c, _u, _f, reason, _p) -> None:
        if not reason.is_failure:
            accepted.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, 30)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        return accepted.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_broker_config_runs_a_tls_mosquitto_for_devices_and_controller(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "controller"))
    device_port, controller_port = free_port(), free_port()
    out = tmp_path / "broker-files"
    code = main(
        [
            "broker",
            "config",
            "--out",
            str(out),
            "--hostname",
            "localhost",
            "--device-port",
            str(device_port),
            "--device-host",
            "127.0.0.1",
            "--controller-port",
            str(controller_port),
        ]
    )
    assert code == 0
    advice = json.loads(capsys.readouterr().out)
    mqtt_settings = advice["controller_settings"]["mqtt"]
    assert mqtt_settings["port"] == controller_port
    # the controller's listener binds 127.0.0.1 (the default): that is where to reach it
    assert mqtt_settings["host"] == "127.0.0.1"

    fleet = CertificateAuthority.load_or_create(tmp_path / "controller" / "pki" / "fleet")
    key_pem, csr = make_csr("cam-01")
    issued = fleet.issue_client(csr, "cam-01", datetime.now(timezone.utc))
    dev_key, dev_cert = write_identity(
        tmp_path / "dev", "cam-01", KeyAndCertificate(key_pem, issued)
    )

    conf = Path(advice["mosquitto_include"]).read_text()
    with MosquittoBroker(device_port, workdir=tmp_path / "mosquitto", security_config=conf):
        ca = mqtt_settings["ca_file"]
        ctl_cert, ctl_key = Path(mqtt_settings["cert_file"]), Path(mqtt_settings["key_file"])
        host = mqtt_settings["host"]
        assert _connects(controller_port, ca, ctl_cert, ctl_key, "ctl", host)
        assert _connects(device_port, ca, dev_cert, dev_key, "cam-01")
        # each identity only where it belongs
        assert not _connects(controller_port, ca, dev_cert, dev_key, "cam-01")
