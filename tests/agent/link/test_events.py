"""The agent's events: one typed reporter, and every reason it sends is a protocol enum member.

The source scan catches a reason or event kind spelled as a string literal anywhere on the
way to an event; mypy then holds the typed signatures that carry the members there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.link.events import DeploymentRef, EventReporter
from protocol.events import (
    EventKind,
    EventLevel,
    InstallReason,
    RefusalReason,
    TransferReason,
)
from protocol.messages import ChunkRange, Event

AGENT = Path(__file__).resolve().parents[3] / "agent"
# runtime probes explain themselves in free text; that is state, not a deployment reason
FREE_TEXT_ROOMS = ("runtimes", "detect")
# constructors that carry a deployment reason, and the position it takes
REASON_POSITION = {"ModelLoadFailed": 0, "Judgement": 1}


def _sources() -> list[Path]:
    return [
        path
        for path in sorted(AGENT.rglob("*.py"))
        if path.relative_to(AGENT).parts[0] not in FREE_TEXT_ROOMS
    ]


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def literal_reasons(source: str, filename: str) -> list[str]:
    """`file:line what` for each reason, kind or level given as a string literal."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node)
        spelled = [
            k.arg for k in node.keywords if k.arg in ("reason", "level") and _is_text(k.value)
        ]
        if name == "report" and node.args and _is_text(node.args[0]):
            spelled.append("kind")
        position = REASON_POSITION.get(name)
        if position is not None and len(node.args) > position and _is_text(node.args[position]):
            spelled.append(f"{name} reason")
        found += [f"{filename}:{node.lineno} {what}" for what in spelled]
    return found


def test_the_agent_spells_no_event_reason_kind_or_level_as_a_string():
    sources = _sources()
    assert any(p.name == "installer.py" for p in sources)  # the scan reaches the deploy room
    found = [hit for path in sources for hit in literal_reasons(path.read_text(), str(path))]
    assert found == []


@pytest.mark.parametrize(
    "snippet",
    [
        'events.report(EventKind.FAILED, ref, reason="stalled")',
        'events.report("failed", ref)',
        'events.report(EventKind.FAILED, ref, level="error")',
        'self._put(digest, "failed", reason=f"{why}")',
        'raise ModelLoadFailed("no_runtime", detail)',
        'Judgement("failed", "no_frames", "none")',
    ],
)
def test_the_scan_sees_a_reason_spelled_as_a_string(snippet):
    assert literal_reasons(snippet, "x.py") != []


def test_each_reason_value_names_one_member():
    values = [m.value for enum in (RefusalReason, TransferReason, InstallReason) for m in enum]
    assert len(values) == len(set(values))


class Sent:
    def __init__(self):
        self.stored: list[Event] = []
        self.now: list[Event] = []
        self.reporter = EventReporter("cam-01", store=self.stored.append, send_now=self.now.append)


def test_events_go_to_the_outbox_and_chunk_requests_straight_out():
    sent = Sent()
    ref = DeploymentRef("ab" * 32, "cmd-1")
    sent.reporter.report(
        EventKind.DOWNLOADING,
        ref,
        reason=TransferReason.STALLED,
        level=EventLevel.WARNING,
        progress=0.5,
    )
    sent.reporter.report(
        EventKind.CHUNK_REQUEST, ref, missing=(ChunkRange(start=2, end=4),), message="attempt 1"
    )
    [stored], [now] = sent.stored, sent.now
    assert (stored.kind, stored.reason, stored.level, stored.progress) == (
        "downloading",
        "stalled",
        "warning",
        0.5,
    )
    assert (stored.bundle, stored.cmd_id, stored.device) == ("ab" * 32, "cmd-1", "cam-01")
    assert now.kind == "chunk_request" and [(r.start, r.end) for r in now.missing] == [(2, 4)]


def test_an_event_carries_the_reason_value_and_a_cut_message():
    sent = Sent()
    sent.reporter.report(EventKind.FAILED, reason=InstallReason.NO_FRAMES, message="x" * 5000)
    [event] = sent.stored
    assert event.reason == "no_frames" and type(event.reason) is str
    assert len(event.message) == 4096
    assert (event.bundle, event.cmd_id, event.level) == (None, None, "info")


def test_a_ref_takes_the_verified_digest_and_keeps_its_command():
    assert DeploymentRef(None, "cmd-1").with_bundle("cd" * 32) == DeploymentRef("cd" * 32, "cmd-1")
