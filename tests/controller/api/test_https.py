"""The API over https: served with a certificate from the fleet's CA, verified by clients that
trust that CA, and never plain beyond loopback."""

from __future__ import annotations

import ssl
from datetime import datetime, timezone

import httpx
import pytest

from controller.auth.ca import CertificateAuthority, write_identity
from controller.cli.client import ApiClient
from controller.server import Controller
from controller.settings import HttpSettings
from tests.controller import operators

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def api_tls(tmp_path):
    """A CA and a server certificate for 127.0.0.1 and localhost; returns (ca, key, cert)."""
    now = datetime.now(timezone.utc)
    ca = CertificateAuthority.create("test fleet CA", now)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    key, cert = write_identity(
        tmp_path / "api", "api", ca.issue_server(["127.0.0.1", "localhost"], now)
    )
    return ca_path, key, cert


@sqlite_only
def test_the_api_serves_https_that_a_client_trusting_the_fleet_ca_verifies(
    controller_settings, api_tls, monkeypatch
):
    ca_path, key, cert = api_tls
    settings = controller_settings(http=HttpSettings(port=0, cert_file=cert, key_file=key))
    with Controller(settings) as ctl:
        assert ctl.api_url.startswith("https://")
        assert settings.resolved_public_url(ctl.http_port).startswith("https://")
        headers = operators.auth_headers(ctl.sessions)
        trusting = ssl.create_default_context(cafile=str(ca_path))
        with httpx.Client(base_url=ctl.api_url, verify=trusting, headers=headers) as http:
            assert http.get("/api/devices").status_code == 200
        # a client that trusts only the system's CAs refuses the fleet's certificate
        with httpx.Client(base_url=ctl.api_url) as untrusting:
            with pytest.raises(httpx.ConnectError) as refused:
                untrusting.get("/api/devices")
            assert isinstance(refused.value.__context__, ssl.SSLCertVerificationError) or (
                "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
            )
        # plain http on the https port gets no answer
        plain = ctl.api_url.replace("https://", "http://")
        with httpx.Client(base_url=plain) as http, pytest.raises(httpx.HTTPError):
            http.get("/api/devices").raise_for_status()
        # the CLI's client trusts the fleet CA named by EDGEFLEET_CA_FILE
        monkeypatch.setenv("EDGEFLEET_CA_FILE", str(ca_path))
        token = headers["Authorization"].split(" ", 1)[1]
        client = ApiClient(ctl.api_url, token=token)
        try:
            assert client.request("GET", "/api/devices") == []
        finally:
            client.close()


def test_a_plain_api_beyond_loopback_is_refused():
    with pytest.raises(ValueError, match="tls_required"):
        HttpSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="tls_incomplete"):
        HttpSettings(host="127.0.0.1", cert_file="api.pem")
    assert HttpSettings(host="::1").tls is False
