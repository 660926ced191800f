"""The operator CLI's contract: its exit codes, `login`/`logout` and the token they keep, bundle
references by `name@version` or digest prefix, and shell completion."""

from __future__ import annotations

import http.server
import io
import json
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from controller.auth.users import Role, create_user
from controller.cli.client import credentials_path
from controller.cli.main import main
from controller.db import Bundle
from controller.demo.broker import free_port
from controller.demo.waiting import wait_until
from protocol.messages import TRANSFER_TOKEN_HEADER, Snapshot
from tests.controller import operators
from tests.controller.fake_agents import FakeAgent

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def failing_server() -> Iterator[str]:
    """A web server that answers every request with 503, as a controller behind a proxy does
    while it is down."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _fail(self) -> None:
            body = b'{"detail": "upstream down"}'
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _fail

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_and_5xx_exit_3_usage_exits_2(capsys, failing_server):
    code, _, err = run(capsys, "--api", f"http://127.0.0.1:{free_port()}", "devices")
    assert code == 3 and err.startswith("edgefleet: cannot reach the controller")
    code, _, err = run(capsys, "--api", failing_server, "devices")
    assert code == 3 and "HTTP 503" in err and "upstream down" in err
    assert err.count("\n") == 1
    # argparse's own errors
    with pytest.raises(SystemExit) as exited:
        main(["deploy"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["logs", "cam-a", "--tail", "0"])
    assert exited.value.code == 2
    # a flag whose value does not parse, found by the command (before it asks anything)
    code, _, err = run(capsys, "set-config", "cam-a", "--config", "{nope")
    assert code == 2 and "not JSON" in err
    code, _, err = run(capsys, "bundle", "upload", "/nonexistent/x.bundle")
    assert code == 2 and "no such file" in err


@SQLITE_ONLY
def test_401_exits_4_403_and_4xx_exit_1(capsys, controller, monkeypatch):
    api = controller.api_url
    monkeypatch.delenv("EDGEFLEET_TOKEN")
    code, _, err = run(capsys, "--api", api, "devices")
    assert code == 4 and "edgefleet login" in err
    monkeypatch.setenv("EDGEFLEET_TOKEN", "ef_not-a-token")
    assert run(capsys, "--api", api, "devices")[0] == 4
    monkeypatch.setenv("EDGEFLEET_TOKEN", operators.make_token(controller.sessions, "viewer"))
    assert run(capsys, "--api", api, "devices")[0] == 0
    code, _, err = run(capsys, "--api", api, "restart-pipeline", "cam-a")
    assert code == 1 and "HTTP 403" in err
    monkeypatch.setenv("EDGEFLEET_TOKEN", operators.make_token(controller.sessions, "operator"))
    code, _, err = run(capsys, "--api", api, "rollout", "show", "nope")
    assert code == 1 and "no rollout 'nope'" in err


@SQLITE_ONLY
def test_login_keeps_a_private_token_and_logout_revokes_it(
    capsys, controller, monkeypatch, tmp_path
):
    api = controller.api_url
    with controller.sessions() as db:
        create_user(db, "olga", operators.TEST_PASSWORD, Role.OPERATOR)
        db.commit()
    monkeypatch.delenv("EDGEFLEET_TOKEN")
    monkeypatch.delenv("EDGEFLEET_API", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    code, _, err = run(capsys, "login", api, "--user", "olga", "--password-stdin")
    assert code == 4 and not credentials_path().exists()

    monkeypatch.setattr("sys.stdin", io.StringIO(operators.TEST_PASSWORD + "\n"))
    code, out, _ = run(capsys, "login", api, "--user", "olga", "--password-stdin")
    assert code == 0 and "logged in" in out
    path = credentials_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    kept = json.loads(path.read_text())
    token = kept["controllers"][api]["token"]
    assert kept["default"] == api and token.startswith("ef_")
    # no --api and no $EDGEFLEET_API: the controller signed in to, with the kept token
    code, out, _ = run(capsys, "--output", "json", "devices")
    assert code == 0 and json.loads(out) == []

    code, _, err = run(capsys, "logout")
    assert code == 0 and "logged out" in err
    assert not path.exists()
    monkeypatch.setenv("EDGEFLEET_TOKEN", token)
    assert run(capsys, "--api", api, "devices")[0] == 4  # revoked on the controller too
    code, _, err = run(capsys, "--api", api, "logout")
    assert code == 0 and "not logged in" in err


def _store_bundle_row(controller, digest: str, name: str, version: int) -> None:
    with controller.sessions() as db:
        db.add(
            Bundle(
                digest=digest,
                name=name,
                version=version,
                size=1,
                chunk_size=1,
                manifest={},
                path="missing",
                created=time.time(),
            )
        )
        db.commit()


@SQLITE_ONLY
def test_bundles_by_name_at_version_or_digest_prefix(capsys, controller, make_bundle):
    api = controller.api_url
    built = make_bundle(name="face", version=3)
    code, out, _ = run(
        capsys, "--api", api, "--output", "json", "bundle", "upload", str(built.path)
    )
    assert code == 0 and json.loads(out)["digest"] == built.digest
    # the 12 characters its own table shows
    code, out, _ = run(capsys, "--api", api, "bundles")
    assert built.digest[:12] in out
    for ref in (built.digest[:12], built.digest[:6].upper(), "face@3", built.digest):
        code, out, err = run(capsys, "--api", api, "--output", "json", "bundle", "show", ref)
        assert code == 0, err
        assert json.loads(out)["digest"] == built.digest
    code, out, _ = run(capsys, "--api", api, "bundle", "show", "face@3")
    assert f"digest    {built.digest}" in out and "variant   litert/" in out

    # two stored digests that share a prefix
    shared = uuid.uuid4().hex[:8]
    for n in (1, 2):
        _store_bundle_row(controller, (shared + f"{n}" * 56), "other", n)
    for argv in (
        ("bundle", "show", shared),
        ("deploy", "cam-a", shared),
        ("rollout", "create", "r1", "--bundle", shared, "--device", "cam-a"),
    ):
        code, out, err = run(capsys, "--api", api, *argv)
        assert code == 1, (argv, err)
        assert "names 2 bundles; give more of the digest" in err
        assert err.count("\n") == 1 and "Traceback" not in err and "loc" not in err
    for ref, expected in (("face@9", "no bundle 'face@9'"), ("0badc0de", "no bundle")):
        code, _, err = run(capsys, "--api", api, "deploy", "cam-a", ref)
        assert code == 1 and expected in err, err
    code, _, err = run(capsys, "--api", api, "deploy", "cam-a", "not a ref")
    assert code == 1 and "not a bundle reference" in err and err.count("\n") == 1


def test_completion_scripts_come_from_the_parser(capsys, tmp_path):
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    path = tmp_path / "edgefleet.bash"
    path.write_text(script)

    def complete(*words: str) -> list[str]:
        array = " ".join(f"'{w}'" for w in words)
        shell = (
            f"source {path}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; "
            'COMPREPLY=(); _edgefleet; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(
            ["bash", "--norc", "-c", shell], capture_output=True, text=True, check=True
        )
        return done.stdout.split()

    assert complete("edgefleet", "ro") == ["rollout", "rollback"]
    assert "revert" in complete("edgefleet", "rollout", "")
    assert complete("edgefleet", "--api", "http://x", "rollout", "sh") == ["show"]
    assert complete("edgefleet", "rollout", "show", "--output", "j") == ["json"]
    assert "--wait" in complete("edgefleet", "deploy", "--")
    assert complete("edgefleet", "completion", "") == ["bash", "zsh", "fish"]
    assert complete("edgefleet", "logs", "cam-a", "--f") == ["--follow"]

    code, zsh, _ = run(capsys, "completion", "zsh")
    assert code == 0 and zsh.startswith("#compdef edgefleet") and "bashcompinit" in zsh
    code, fish, _ = run(capsys, "completion", "fish")
    assert code == 0
    assert "complete -c edgefleet -f -n '__edgefleet_at '\"'\"'edgefleet rollout'\"'\"''" in fish
    assert "-l output -x -a 'table json'" in fish


JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100 + b"\xff\xd9"


@SQLITE_ONLY
def test_snapshot_waits_for_the_jpeg_and_saves_it(capsys, controller, mosquitto, tmp_path):
    agent = FakeAgent(mosquitto.host, mosquitto.port, "cam-a")
    try:
        agent.subscribe(agent.topics.cmd("cam-a"))
        agent.online(profile="rpi4")
        api = controller.api_url
        wait_until("device known", lambda: "cam-a" in run(capsys, "--api", api, "devices")[1])

        def upload() -> None:
            command = agent.next_command(timeout=10)
            assert isinstance(command, Snapshot) and command.track_id == 4
            assert command.upload_url is not None
            headers = {TRANSFER_TOKEN_HEADER: command.upload_token or ""}
            time.sleep(0.3)  # the CLI waits for it meanwhile
            httpx.put(command.upload_url, content=JPEG, headers=headers, timeout=10)

        uploader = threading.Thread(target=upload)
        uploader.start()
        out_file = tmp_path / "snap.jpg"
        code, out, err = run(
            capsys, "--api", api, "--output", "json", "snapshot", "cam-a", "--camera", "cam0",
            "--track", "4", "--out", str(out_file), "--timeout", "10",
        )  # fmt: skip
        uploader.join(10)
        assert code == 0, err
        assert json.loads(out)["saved"] == str(out_file) and out_file.read_bytes() == JPEG
        code, _, err = run(
            capsys, "--api", api, "snapshot", "cam-zz", "--camera", "cam0", "--track", "1"
        )
        assert code == 1 and "no device 'cam-zz'" in err
    finally:
        agent.close()
