"""The demo's simulated fleet: devices beside the real agent, enrolled the real way, and a
rollout that takes them to a new bundle version in waves while the demo runs.

Each simulated device makes its own key, is pre-approved and enrolled by the controller's
enrollment service (so the fleet CA signs its certificate and the dashboard lists it), then
connects to the same TLS broker as the real agent with that certificate. The devices declare
the tag `simulated` in their state; the rollout selects on it, so the real agent keeps the
bundle it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.auth.enrollment import EnrollmentService
from controller.demo.sim.device import TlsFiles
from controller.demo.sim.fleet import SimFleet
from controller.demo.sim.knobs import SimKnobs
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.spec import RolloutSpec, Selector
from ota.trust import TrustStore

log = logging.getLogger(__name__)

SIM_TAG = "simulated"
SIM_PREFIX = "sim-cam"


class SimIdentityError(RuntimeError):
    """A simulated device could not get its certificate."""


def enroll_identities(
    enrollment: EnrollmentService, ids: list[str], fleet_ca: Path, directory: Path
) -> dict[str, TlsFiles]:
    """A key (made here, 0600) and a fleet certificate for each id, through the enrollment
    service as a pre-approved device. Raises SimIdentityError."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files: dict[str, TlsFiles] = {}
    for device in ids:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
            .sign(key, hashes.SHA256())
        )
        enrollment.preapprove(device)
        result = enrollment.enroll(device, csr.public_bytes(serialization.Encoding.PEM))
        if result.certificate is None:
            raise SimIdentityError(f"{device}: enrollment answered {result.status}")
        key_path, cert_path = directory / f"{device}.key", directory / f"{device}.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(result.certificate)
        files[device] = TlsFiles(ca=fleet_ca, cert=cert_path, key=key_path)
    return files


@dataclass(frozen=True)
class SimBroker:
    """Where the simulated devices connect; `fleet_ca` None means plain MQTT."""

    host: str
    port: int
    fleet_ca: Path | None


def start_sim_fleet(
    count: int,
    broker: SimBroker,
    enrollment: EnrollmentService,
    trust: TrustStore,
    installed: Path,
    workdir: Path,
) -> SimFleet:
    """`count` simulated devices on `installed`, online on the demo's broker."""
    ids = [f"{SIM_PREFIX}-{i:04d}" for i in range(count)]
    tls = None
    if broker.fleet_ca is not None:
        identities = enroll_identities(enrollment, ids, broker.fleet_ca, workdir / "identities")
        tls = identities.__getitem__
    knobs = SimKnobs(tags=(SIM_TAG,), health_interval_s=5.0, probation_s=3.0, seed=7)
    return SimFleet(
        count,
        host=broker.host,
        port=broker.port,
        trust=trust,
        knobs=knobs,
        id_prefix=SIM_PREFIX,
        workdir=workdir / "devices",
        installed=installed,
        tls=tls,
    ).start(timeout=120)


def start_rollout(engine: RolloutEngine, bundle: str, devices: int, duration: float) -> str:
    """A canary of one, then 20 %, then the rest, paced to finish within about half of the
    demo's `duration`; returns the rollout's id."""
    rate = max(30.0, devices / max(duration / 2.0, 1.0) * 60.0)
    spec = RolloutSpec.model_validate(
        {
            "waves": ["1", "20%", "100%"],
            "rate_per_min": rate,
            "success_threshold": "90%",
            "failure_threshold": "10%",
            "min_finished": 1,
        }
    )
    return engine.create("demo-rollout", bundle, Selector(tags=[SIM_TAG]), spec)
