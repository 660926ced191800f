"""The one bounded poll loop that the demo and the tests wait with."""

from __future__ import annotations

import time

import pytest

from controller.demo.waiting import WaitTimedOut, wait_until


def test_returns_the_first_truthy_value_of_the_check():
    answers = iter([None, False, 0, {"online": True}])
    assert wait_until("device", lambda: next(answers), timeout=5, interval=0.001) == {
        "online": True
    }


def test_times_out_with_what_it_waited_for():
    calls = []
    started = time.monotonic()
    with pytest.raises(WaitTimedOut, match=r"timed out after 0\.2s waiting for the bundle"):
        wait_until("the bundle", lambda: calls.append(1), timeout=0.2, interval=0.05)
    assert 0.2 <= time.monotonic() - started < 2.0
    assert len(calls) >= 2


def test_checks_at_least_once_even_without_time_left():
    assert wait_until("now", lambda: "yes", timeout=0) == "yes"


def test_an_error_in_the_check_ends_the_wait_at_once():
    def check() -> bool:
        raise LookupError("agent exited")

    with pytest.raises(LookupError, match="agent exited"):
        wait_until("never", check, timeout=30)
