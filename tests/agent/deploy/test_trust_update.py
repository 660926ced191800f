"""The agent's trust-update handling: the ack it gives, and what the wire lets through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.deploy.trust_update import apply_trust_update
from controller.cli.main import main as edgefleet
from protocol.codec import decode_command, encode
from protocol.errors import ProtocolError
from protocol.messages import TrustUpdate


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    assert edgefleet(["keys", "init", "--dir", str(folder)]) == 0
    assert edgefleet(["keys", "rotate-root", "--dir", str(folder)]) == 0
    return folder


def test_trust_update_round_trips_the_wire_and_is_applied(keys: Path, tmp_path: Path) -> None:
    device = tmp_path / "trust.json"
    shutil.copy(keys / "root.1.json", device)
    sent = TrustUpdate(device="cam-01", roots=((keys / "root.2.json").read_text(),))

    received = decode_command(encode(sent))

    assert isinstance(received, TrustUpdate)
    assert apply_trust_update(device, received) == (True, "trusted", "root version 2")
    assert device.read_bytes() == (keys / "root.2.json").read_bytes()


def test_a_refused_root_becomes_a_negative_ack_with_the_reason(keys: Path, tmp_path: Path):
    device = tmp_path / "trust.json"
    shutil.copy(keys / "root.1.json", device)
    forged = json.loads((keys / "root.2.json").read_text())
    # the root key slipped into the release role after signing
    forged["signed"]["roles"]["release"]["keyids"] += forged["signed"]["roles"]["root"]["keyids"]

    ok, result, detail = apply_trust_update(
        device, TrustUpdate(device="cam-01", roots=(json.dumps(forged),))
    )

    assert (ok, result) == (False, "root_threshold_not_met")
    assert "0 of 1 required signatures" in detail
    assert device.read_bytes() == (keys / "root.1.json").read_bytes()


def test_an_unwritable_trust_file_is_a_negative_ack(keys: Path, tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "trust.json"

    ok, result, _ = apply_trust_update(
        missing, TrustUpdate(device="cam-01", roots=((keys / "root.2.json").read_text(),))
    )

    assert (ok, result) == (False, "trust_file_unwritable")


def test_oversized_or_too_many_roots_are_refused_on_the_wire() -> None:
    big = TrustUpdate.model_construct(device="cam-01", roots=("x" * (65 << 10),))
    many = TrustUpdate.model_construct(device="cam-01", roots=("{}",) * 4)
    for message in (big, many):
        with pytest.raises(ProtocolError):
            decode_command(encode(message))
