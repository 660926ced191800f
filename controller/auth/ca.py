"""The controller's certificate authority: devices' client certificates, the broker's server
certificate, the controller's own identity, revocation lists.

Pure where it can be: `CertificateAuthority` works on bytes and times handed in; only
`CertificateAuthority.load_or_create` touches files (the key is written 0600).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.errors import InvalidDeviceId
from protocol.topics import validate_device_id

log = logging.getLogger(__name__)

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"
# Smallest RSA key a CSR may carry; EC keys must be on one of these curves.
_MIN_RSA_BITS = 2048
_CURVES = (ec.SECP256R1, ec.SECP384R1)
# A CRL's nextUpdate: OpenSSL refuses every client once it has passed. Nobody fetches this CRL:
# the controller writes it straight into the broker's file at start and on every revocation,
# so a long validity costs nothing and a controller left running for months cannot lock the
# whole fleet out.
CRL_VALIDITY = timedelta(days=3650)
BACKDATE = timedelta(minutes=5)
"""Certificates start this long before they are issued: a peer's clock a little behind still
accepts them."""


class CertificateError(ValueError):
    """A CSR or certificate was refused; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate as issued: PEM bytes plus what the database keeps about it."""

    pem: bytes
    serial: int
    subject: str
    fingerprint: str  # sha256 of the public key (SubjectPublicKeyInfo DER), hex
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class KeyAndCertificate:
    """A private key (PEM, unencrypted) with its certificate: for servers and the controller."""

    key_pem: bytes
    cert: IssuedCertificate


def public_key_fingerprint(key: object) -> str:
    """sha256 (hex) of a public key's SubjectPublicKeyInfo; raises CertificateError."""
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise CertificateError("unsupported_key", f"{type(key).__name__} keys are not accepted")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def load_csr(pem: bytes, device_id: str) -> x509.CertificateSigningRequest:
    """Parse a CSR and check it names `device_id`, is self-signed and uses a strong key.

    Raises CertificateError with reason bad_csr, csr_signature, device_mismatch, weak_key.
    """
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise CertificateError("bad_csr", "not a PEM certificate signing request") from exc
    if not csr.is_signature_valid:
        raise CertificateError("csr_signature", "the CSR is not signed by its own key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != device_id:
        raise CertificateError("device_mismatch", f"the CSR's common name is not {device_id!r}")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise CertificateError("weak_key", f"RSA keys need {_MIN_RSA_BITS} bits")
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, _CURVES):
        raise CertificateError("weak_key", f"curve {key.curve.name} is not accepted")
    public_key_fingerprint(key)  # refuses other key types
    return csr


def cert_info(pem: bytes) -> IssuedCertificate:
    """What a PEM certificate says about itself; raises CertificateError(bad_certificate)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError("bad_certificate", "not a PEM certificate") from exc
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return IssuedCertificate(
        pem=pem,
        serial=cert.serial_number,
        subject=str(cn[0].value) if cn else "",
        fingerprint=public_key_fingerprint(cert.public_key()),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def needs_renewal(not_before: datetime, not_after: datetime, now: datetime) -> bool:
    """Whether a certificate is in its renewal window: the last third of its lifetime."""
    return now >= not_after - (not_after - not_before) / 3


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _serial() -> int:
    # 159 random bits: positive, unique in practice, below RFC 5280's 20-octet limit
    return secrets.randbits(159) | 1


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


class CertificateAuthority:
    """Signs certificates with one ECDSA P-256 CA key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    # ---- creation and storage --------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str, now: datetime, valid: timedelta = timedelta(days=3650)
    ) -> CertificateAuthority:
        """A fresh self-signed CA."""
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + valid)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(
        cls, directory: Path, name: str = "edgefleet fleet CA"
    ) -> CertificateAuthority:
        """The CA kept in `directory` (ca.key 0600, ca.pem); created on first use.

        Raises CertificateError(bad_ca) when the files exist but do not form a CA.
        """
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        if key_path.exists() and cert_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except ValueError as exc:
                raise CertificateError("bad_ca", f"{directory}: unreadable CA files") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey) or (
                public_key_fingerprint(key.public_key())
                != public_key_fingerprint(cert.public_key())
            ):
                raise CertificateError("bad_ca", f"{directory}: the CA key and certificate differ")
            return cls(key, cert)
        ca = cls.create(name, datetime.now(timezone.utc))
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        _write_private(key_path, _key_pem(ca._key))
        cert_path.write_bytes(ca.cert_pem)
        log.info("event=ca_created path=%s", directory)
        return ca

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    # ---- issuing ---------------------------------------------------------------------------

    def _builder(
        self, subject: str, key: object, now: datetime, valid: timedelta, serial: int | None
    ) -> x509.CertificateBuilder:
        if not isinstance(
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise CertificateError("unsupported_key", f"{type(key).__name__} keys are not accepted")
        not_after = min(now + valid, self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.cert.subject)
            .public_key(key)
            .serial_number(serial if serial is not None else _serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def _sign(self, builder: x509.CertificateBuilder) -> IssuedCertificate:
        cert = builder.sign(self._key, hashes.SHA256())
        return cert_info(cert.public_bytes(serialization.Encoding.PEM))

    def issue_client(
        self,
        csr_pem: bytes,
        device_id: str,
        now: datetime,
        valid: timedelta = timedelta(days=90),
        serial: int | None = None,
    ) -> IssuedCertificate:
        """A client certificate for `device_id` (CN and DNS SAN) over the CSR's key.

        Raises CertificateError (see load_csr) and ProtocolError for a bad device id.
        """
        try:
            validate_device_id(device_id)
        except InvalidDeviceId as exc:
            raise CertificateError("bad_device_id", str(exc)) from exc
        csr = load_csr(csr_pem, device_id)
        builder = self._builder(device_id, csr.public_key(), now, valid, serial)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(device_id)]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return self._sign(builder)

    def issue_identity(
        self, name: str, now: datetime, valid: timedelta = timedelta(days=365)
    ) -> KeyAndCertificate:
        """A new key and client certificate for a service identity (the controller's own)."""
        key = _new_key()
        builder = self._builder(name, key.public_key(), now, valid, None).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return KeyAndCertificate(_key_pem(key), self._sign(builder))

    def issue_server(
        self, hostnames: Sequence[str], now: datetime, valid: timedelta = timedelta(days=365)
    ) -> KeyAndCertificate:
        """A new key and server certificate for the broker (or the API) under `hostnames`."""
        if not hostnames:
            raise CertificateError("no_hostnames", "a server certificate needs a name")
        names: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = _new_key()
        builder = (
            self._builder(hostnames[0], key.public_key(), now, valid, None)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return KeyAndCertificate(_key_pem(key), self._sign(builder))

    # ---- checking and revoking -------------------------------------------------------------

    def verify_issued(self, pem: bytes, now: datetime) -> IssuedCertificate:
        """A certificate this CA issued and that is valid at `now`.

        Raises CertificateError with reason bad_certificate, foreign_certificate, expired.
        """
        info = cert_info(pem)
        cert = x509.load_pem_x509_certificate(pem)
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateError("foreign_certificate", "not issued by this CA") from exc
        if not info.not_before <= now <= info.not_after:
            raise CertificateError("expired", f"valid {info.not_before} .. {info.not_after}")
        return info

    def crl(self, revoked: Iterable[tuple[int, datetime]], now: datetime) -> bytes:
        """A signed CRL (PEM) listing `(serial, revoked_at)` pairs, valid for CRL_VALIDITY."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + CRL_VALIDITY)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)


def write_identity(directory: Path, name: str, pair: KeyAndCertificate) -> tuple[Path, Path]:
    """Write `<name>.key` (0600) and `<name>.pem` into `directory`; returns both paths."""
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    _write_private(key_path, pair.key_pem)
    cert_path.write_bytes(pair.cert.pem)
    return key_path, cert_path
