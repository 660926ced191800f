"""The device's identity: its own key pair (made here on first start, 0600, never sent), a CSR
naming the device id, enrollment with the controller over HTTP, and renewal before expiry.

httpx and cryptography load on the first enrollment or renewal, not with the agent: a device
that does not enroll never pays for them."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

KEY_FILE = "device.key"
CERT_FILE = "device.pem"
CA_FILE = "fleet-ca.pem"


class EnrollmentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="controller base URL for enrollment; none: do not enroll"
    )
    token: str | None = Field(None, description="one-time enrollment token from an operator")
    ca_file: Path | None = Field(
        None, description="CA that signed the controller's HTTPS certificate (https URLs)"
    )
    poll_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        10.0, description="how often a pending request asks again"
    )
    wait_s: Annotated[float, Field(gt=0)] = Field(
        24 * 3600.0, description="longest the agent waits for an operator's approval at start"
    )


class EnrollmentRefused(RuntimeError):
    """The controller refused the request; `reason` is its code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class IdentityFiles:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device key at `path`, made (P-256, mode 0600) if absent."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key")
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    log.info("event=device_key_created path=%s", path)
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """A CSR (PEM) for `device_id`, signed by the device key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _renewal_due(cert_pem: bytes, now: datetime) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= end - (end - start) / 3


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class DeviceIdentity:
    """Keeps the key, certificate and fleet CA in one folder and talks to the controller."""

    def __init__(
        self,
        device_id: str,
        directory: Path,
        settings: EnrollmentSettings,
        client: Callable[[], httpx.Client] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.device_id = device_id
        self.files = IdentityFiles(directory)
        self.settings = settings
        self._client = client or self._default_client
        self._clock = clock
        self._sleep = sleep

    def _default_client(self) -> httpx.Client:
        import httpx

        verify: ssl.SSLContext | bool = True
        if self.settings.ca_file:
            verify = ssl.create_default_context(cafile=str(self.settings.ca_file))
        return httpx.Client(base_url=self.settings.url or "", timeout=30.0, verify=verify)

    def ensure(self) -> IdentityFiles:
        """A current certificate on disk: enroll (waiting for approval) or renew when due.

        Raises EnrollmentRefused, httpx.HTTPError, TimeoutError (no approval in wait_s).
        """
        key = load_or_create_key(self.files.key)
        if self.files.cert.exists():
            try:
                self.renew_if_due()
                return self.files
            except EnrollmentRefused as exc:
                log.warning("event=renewal_refused reason=%s; enrolling again", exc.reason)
        return self._enroll(key)

    def renew_if_due(self) -> bool:
        """Renew the certificate when it is in its last third; True when it was renewed.

        Raises EnrollmentRefused, httpx.HTTPError.
        """
        if not self.files.cert.exists() or not _renewal_due(
            self.files.cert.read_bytes(), self._clock()
        ):
            return False
        key = load_or_create_key(self.files.key)
        body = {"device": self.device_id, "csr": make_csr(key, self.device_id).decode()}
        self._store(self._post("/api/enroll/renew", body))
        log.info("event=certificate_renewed device=%s", self.device_id)
        return True

    def _enroll(self, key: ec.EllipticCurvePrivateKey) -> IdentityFiles:
        body = {
            "device": self.device_id,
            "csr": make_csr(key, self.device_id).decode(),
            "token": self.settings.token,
        }
        deadline = time.monotonic() + self.settings.wait_s
        while True:
            answer = self._post("/api/enroll", body)
            if answer.get("certificate"):
                self._store(answer)
                log.info("event=device_enrolled device=%s", self.device_id)
                return self.files
            log.info("event=enrollment_pending device=%s", self.device_id)
            body["token"] = None  # a token is spent by its first use
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no approval for {self.device_id} in {self.settings.wait_s}s")
            self._sleep(self.settings.poll_s)

    def _post(self, path: str, body: Mapping[str, str | None]) -> dict[str, str]:
        with self._client() as http:
            response = http.post(path, json=body)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail") or {}
            except ValueError:
                detail = {}
            reason = (
                detail.get("reason", f"http_{response.status_code}")
                if isinstance(detail, dict)
                else f"http_{response.status_code}"
            )
            raise EnrollmentRefused(reason, response.text[:300])
        data = response.json()
        if not isinstance(data, dict):
            raise EnrollmentRefused("bad_answer", "the controller's answer is not an object")
        return data

    def _store(self, answer: dict[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = answer.get("certificate")
        if not cert:
            raise EnrollmentRefused("bad_answer", "no certificate in the answer")
        parsed = x509.load_pem_x509_certificate(cert.encode())
        key = load_or_create_key(self.files.key)
        ours = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = parsed.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if ours != theirs:
            raise EnrollmentRefused("key_mismatch", "the certificate is for another key")
        _write(self.files.ca, answer["ca"].encode())
        _write(self.files.cert, cert.encode())


class RenewalTimer:
    """Checks the certificate now and then while the agent runs, and renews it when due.

    The broker checks a certificate only when a connection starts, so the renewed one is handed
    to `on_renewed` (the session loads it for its next connection); nothing is interrupted.
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        on_renewed: Callable[[IdentityFiles], None],
        interval_s: float = 6 * 3600.0,
    ) -> None:
        self.identity = identity
        self.on_renewed = on_renewed
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cert-renewal", daemon=True)

    def start(self) -> RenewalTimer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check(self) -> bool:
        """One check; errors are logged and tried again at the next one."""
        import httpx

        try:
            renewed = self.identity.renew_if_due()
        except (EnrollmentRefused, httpx.HTTPError, OSError, ValueError) as exc:
            log.warning("event=renewal_failed error=%r", str(exc))
            return False
        if renewed:
            self.on_renewed(self.identity.files)
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
