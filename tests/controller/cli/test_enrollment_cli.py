"""`edgefleet enroll token create` and `edgefleet devices pending|approve|reject|revoke`."""

from __future__ import annotations

import json

import pytest

from controller.auth.ca import cert_info
from controller.auth.enrollment import IdentityStatus
from controller.cli.main import main
from tests.security.pki import make_csr

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _json(capsys, api: str, *argv: str):
    capsys.readouterr()
    code = main(["--api", api, "--output", "json", *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@SQLITE_ONLY
def test_token_from_the_cli_enrolls_a_device_once(capsys, controller):
    created = _json(capsys, controller.api_url, "enroll", "token", "create", "--device", "cam-01")
    assert created["device"] == "cam-01"
    result = controller.enrollment.enroll("cam-01", make_csr("cam-01")[1], created["token"])
    assert cert_info(result.certificate).subject == "cam-01"


@SQLITE_ONLY
def test_pending_device_is_listed_approved_and_revoked(capsys, controller):
    api = controller.api_url
    _, csr = make_csr("cam-02")
    controller.enrollment.enroll("cam-02", csr)
    assert [r["device"] for r in _json(capsys, api, "devices", "pending")] == ["cam-02"]
    _json(capsys, api, "devices", "approve", "cam-02")
    assert _json(capsys, api, "devices", "pending") == []
    assert controller.enrollment.enroll("cam-02", csr).status == IdentityStatus.ENROLLED
    assert _json(capsys, api, "devices", "revoke", "cam-02")["revoked"] == 1
    statuses = {r["device"]: r["status"] for r in _json(capsys, api, "devices", "pending", "--all")}
    assert statuses == {"cam-02": "revoked"}


@SQLITE_ONLY
def test_deciding_on_an_unknown_device_fails_with_its_reason(capsys, controller):
    capsys.readouterr()
    assert main(["--api", controller.api_url, "devices", "approve", "cam-09"]) != 0
    assert "unknown_device" in capsys.readouterr().err


@SQLITE_ONLY
def test_plain_devices_still_lists(capsys, controller):
    assert _json(capsys, controller.api_url, "devices") == []
