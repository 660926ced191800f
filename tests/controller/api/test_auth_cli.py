"""`edgefleet users`, `tokens`, `login` and `audit` against a started controller."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import stat

import pytest

from controller.auth import bootstrap
from controller.cli.client import credentials_path
from controller.cli.main import main
from controller.server import Controller
from tests.controller.operators import TEST_PASSWORD

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run(capsys, monkeypatch, *argv: str, stdin: str | None = None) -> tuple[int, str]:
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    return code, capsys.readouterr().out


@SQLITE_ONLY
def test_first_admin_login_and_user_management_from_the_cli(
    controller, controller_settings, capsys, monkeypatch, tmp_path
):
    api = controller.api_url
    # the first admin, on the controller's host, straight into its database
    monkeypatch.delenv("EDGEFLEET_TOKEN")
    config = tmp_path / "controller.json"
    settings = controller.settings
    config.write_text(
        json.dumps({"data_dir": str(settings.data_dir), "database_url": settings.database_url})
    )
    code, out = run(
        capsys, monkeypatch, "--output", "json", "users", "create", "--admin", "boss",
        "--password-stdin", "--config", str(config), stdin=TEST_PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["role"] == "admin"

    # nothing stored yet: not authenticated
    assert main(["--api", api, "devices"]) == 4
    code, out = run(
        capsys, monkeypatch, "--api", api, "login", "--user", "boss", "--password-stdin",
        stdin=TEST_PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0 and "logged in" in out
    path = credentials_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    code, out = run(
        capsys, monkeypatch, "--api", api, "--output", "json", "audit", "list", "--method", "CLI"
    )
    [local] = json.loads(out)
    assert (local["action"], local["target"]) == ("users create --local", "name=boss role=admin")
    code, _ = run(
        capsys, monkeypatch, "--api", api, "users", "create", "vic", "--password-stdin",
        stdin=TEST_PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0
    code, out = run(capsys, monkeypatch, "--api", api, "--output", "json", "users", "list")
    roles = {u["name"]: u["role"] for u in json.loads(out)}
    assert (roles["boss"], roles["vic"]) == ("admin", "viewer")
    assert run(capsys, monkeypatch, "--api", api, "users", "set-role", "vic", "operator")[0] == 0
    assert run(capsys, monkeypatch, "--api", api, "users", "disable", "vic")[0] == 0
    code, out = run(capsys, monkeypatch, "--api", api, "--output", "json", "users", "list")
    vic = next(u for u in json.loads(out) if u["name"] == "vic")
    assert (vic["role"], vic["disabled"]) == ("operator", True)
    # a disabled user's token stops working at once
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "vic-config"))
    code, _ = run(
        capsys, monkeypatch, "--api", api, "login", "--user", "vic", "--password-stdin",
        stdin=TEST_PASSWORD + "\n",
    )  # fmt: skip
    assert code == 4


@SQLITE_ONLY
def test_tokens_and_the_audit_log_from_the_cli(controller, capsys, monkeypatch):
    api = controller.api_url  # signed in as an admin through $EDGEFLEET_TOKEN
    code, out = run(
        capsys, monkeypatch, "--api", api, "--output", "json", "tokens", "create", "ci",
        "--role", "viewer", "--ttl-days", "1",
    )  # fmt: skip
    made = json.loads(out)
    assert code == 0 and made["role"] == "viewer" and made["token"].startswith("ef_")
    code, out = run(capsys, monkeypatch, "--api", api, "--output", "json", "tokens", "list")
    assert made["id"] in [t["id"] for t in json.loads(out)]
    assert run(capsys, monkeypatch, "--api", api, "tokens", "revoke", made["id"])[0] == 0
    admin_token = os.environ["EDGEFLEET_TOKEN"]
    monkeypatch.setenv("EDGEFLEET_TOKEN", made["token"])
    assert main(["--api", api, "devices"]) == 4  # revoked
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin_token)
    code, out = run(
        capsys, monkeypatch, "--api", api, "--output", "json", "audit", "list", "--method",
        "DELETE",
    )  # fmt: skip
    [revoked] = json.loads(out)
    assert (revoked["action"], revoked["target"], revoked["status"]) == (
        "/api/tokens/{token_id}",
        f"token_id={made['id']}",
        200,
    )
    code, out = run(capsys, monkeypatch, "--api", api, "--output", "json", "audit", "list")
    actions = [(r["method"], r["action"], r["status"]) for r in json.loads(out)]
    assert actions == [("DELETE", "/api/tokens/{token_id}", 200), ("POST", "/api/tokens", 201)]


@SQLITE_ONLY
def test_the_one_time_secret_in_the_log_makes_the_first_admin(
    controller_settings, caplog, capsys, monkeypatch
):
    caplog.set_level(logging.WARNING, logger="controller.server")
    # the random part may start with "-" (one time in 64); the printed command must still work
    real = bootstrap.secrets.token_urlsafe
    monkeypatch.setattr(bootstrap.secrets, "token_urlsafe", lambda n: "-" + real(n)[1:])
    with Controller(controller_settings()) as ctl:
        [line] = [r.getMessage() for r in caplog.records if "first_admin_needed" in r.getMessage()]
        secret = re.search(r"secret=(\S+)", line)[1]  # type: ignore[index]
        assert not secret.startswith("-")
        # the command the log tells the operator to type, word for word
        command = shlex.split(re.search(r'use="([^"]+)"', line)[1])  # type: ignore[index]
        assert command[:3] == ["edgefleet", "users", "bootstrap"]
        argv = [w for w in command[3:] if w != "NAME"]
        api = ctl.api_url
        code, _ = run(
            capsys, monkeypatch, "users", "bootstrap", "root", *argv,
            "--password-stdin", stdin=TEST_PASSWORD + "\n",
        )  # fmt: skip
        assert code == 0
        # the token it kept signs in the next command
        code, out = run(capsys, monkeypatch, "--api", api, "--output", "json", "users", "list")
        assert code == 0 and [(u["name"], u["role"]) for u in json.loads(out)] == [
            ("root", "admin")
        ]
        code, _ = run(
            capsys, monkeypatch, "--api", api, "users", "bootstrap", "evil", "--secret", secret,
            "--password-stdin", stdin=TEST_PASSWORD + "\n",
        )  # fmt: skip
        assert code == 1  # used up
