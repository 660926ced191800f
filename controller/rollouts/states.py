"""The names of a rollout's states, its members' states, and the errors operators get."""

from __future__ import annotations

from enum import Enum


class RolloutState(str, Enum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"
    REVERTING = "reverting"
    REVERTED = "reverted"

    def __str__(self) -> str:
        return self.value


class MemberState(str, Enum):
    QUEUED = "queued"
    OFFERED = "offered"
    # the device was offline when its wave ended: its target is set, delivered when it returns
    DEFERRED = "deferred"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    REVERTING = "reverting"
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"

    def __str__(self) -> str:
        return self.value


# operator actions apply to these; offers are made only while running
OPEN_STATES = frozenset(
    {
        RolloutState.SCHEDULED,
        RolloutState.RUNNING,
        RolloutState.WAITING_APPROVAL,
        RolloutState.PAUSED,
    }
)
# members of these are still followed (in-flight results, deferred devices, reverts)
FOLLOWED_STATES = OPEN_STATES | {
    RolloutState.HALTED,
    RolloutState.COMPLETED,
    RolloutState.CANCELLED,
    RolloutState.ABORTED,
    RolloutState.REVERTING,
}
TOUCHED_MEMBERS = frozenset({MemberState.OFFERED, MemberState.SUCCEEDED, MemberState.FAILED})


class RolloutError(ValueError):
    """A rollout request that cannot be done; `code` is the reason code."""

    code = "invalid"


class UnknownRollout(RolloutError, LookupError):
    code = "unknown_rollout"


class InvalidTransition(RolloutError):
    code = "invalid_transition"


class EmptySelection(RolloutError):
    code = "no_devices"
