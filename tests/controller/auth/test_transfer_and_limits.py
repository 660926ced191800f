"""Device transfer tokens (pure HMAC) and the login limiter's bounded table."""

from __future__ import annotations

import pytest

from controller.auth.ratelimit import FailureWindow, LoginLimiter
from controller.auth.transfer import TransferPurpose, TransferTokens

KEY = b"k" * 32
DIGEST = "a" * 64


def test_a_transfer_token_opens_only_its_purpose_object_and_time():
    tokens = TransferTokens(KEY, ttl_s=60)
    token = tokens.issue(TransferPurpose.BUNDLE_FILE, DIGEST, "cam-a", now=1000.0)
    grant = tokens.check(token, TransferPurpose.BUNDLE_FILE, DIGEST, now=1010.0)
    assert grant is not None and grant.device == "cam-a" and grant.expires == 1060
    assert tokens.check(token, TransferPurpose.BUNDLE_FILE, DIGEST, now=1060.0) is None
    assert tokens.check(token, TransferPurpose.SNAPSHOT_UPLOAD, DIGEST, now=1010.0) is None
    assert tokens.check(token, TransferPurpose.BUNDLE_FILE, "b" * 64, now=1010.0) is None
    other_key = TransferTokens(b"x" * 32)
    assert other_key.check(token, TransferPurpose.BUNDLE_FILE, DIGEST, now=1010.0) is None
    # the device and expiry are inside the MAC: changing either breaks it
    _t1, device, expires, mac = token.split(".")
    for forged in (f"t1.cam-b.{expires}.{mac}", f"t1.{device}.9999999999.{mac}"):
        assert tokens.check(forged, TransferPurpose.BUNDLE_FILE, DIGEST, now=1010.0) is None
    for junk in (None, "", "t1", "t1.cam-a.x.y", token + "0"):
        assert tokens.check(junk, TransferPurpose.BUNDLE_FILE, DIGEST, now=1010.0) is None


def test_a_short_key_is_refused():
    with pytest.raises(ValueError):
        TransferTokens(b"short")


def test_failures_in_the_window_lock_a_key_until_it_slides_past():
    window = FailureWindow(limit=3, window_s=10.0)
    for t in (0.0, 1.0, 2.0):
        assert window.retry_after("alice", now=t) == 0.0
        window.fail("alice", now=t)
    assert window.retry_after("alice", now=3.0) == pytest.approx(7.0)
    assert window.retry_after("alice", now=10.5) == 0.0  # the first failure left the window
    assert window.retry_after("bob", now=3.0) == 0.0


def test_the_table_stays_bounded():
    window = FailureWindow(limit=1, window_s=60.0, max_keys=100)
    for n in range(1000):
        window.fail(f"10.0.{n // 256}.{n % 256}", now=float(n))
    assert len(window) == 100
    assert window.retry_after("10.0.3.231", now=999.5) > 0  # the newest are kept


def test_a_success_clears_the_users_count_but_not_the_clients():
    limiter = LoginLimiter(per_user=2, per_client=3, window_s=60.0)
    limiter.failed("alice", "10.0.0.9")
    limiter.failed("alice", "10.0.0.9")
    assert limiter.retry_after("alice", "10.0.0.1") > 0
    limiter.succeeded("alice")
    assert limiter.retry_after("alice", "10.0.0.1") == 0.0
    limiter.failed("bob", "10.0.0.9")
    assert limiter.retry_after("carol", "10.0.0.9") > 0
