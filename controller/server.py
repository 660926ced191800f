"""The controller process: database, MQTT ingest, command sender, deployments and the REST API
wired together; each part is handed what it uses."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from types import FrameType, TracebackType

import uvicorn

from controller.api.app import ApiContext, create_app
from controller.auth.acl import BrokerAccess, BrokerFiles, pid_file_reloader, write_crl
from controller.auth.bootstrap import make_bootstrap_secret
from controller.auth.ca import CertificateAuthority
from controller.auth.enrollment import EnrollmentService
from controller.auth.signing import load_command_signer, log_root_expiry
from controller.auth.transfer import TransferTokens, load_or_create_key
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository, BundleVerifier, release_verifier
from controller.dashboard import install as install_dashboard
from controller.db import make_engine, session_factory, upgrade_database
from controller.fleet.deployments import DeploymentService
from controller.fleet.snapshots import SnapshotRequests, SnapshotStore
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import BULK_CHANNELS, Ingest, IngestStats
from controller.mqtt.journal import JournalBusy
from controller.mqtt.retention import apply_retention
from controller.mqtt.session import Publisher
from controller.mqtt.workers import IngestWorkers, WorkerConfig, retired_workers
from controller.rollouts.desired import Reconciler
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.scheduler import RolloutScheduler
from controller.settings import ControllerSettings
from protocol.topics import AGENT_CHANNELS, Topics

log = logging.getLogger(__name__)


CERTIFICATE_CHECK_S = 6 * 3600.0
"""How often the broker's server certificate is checked for renewal."""


class ControllerError(RuntimeError):
    """The controller could not start."""


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one datagram to systemd's notify socket (Type=notify); False when there is none."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("event=sd_notify_failed error=%r", str(exc))
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=); 0 when no watchdog is ours."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2e6


class Controller:
    """One controller replica; `start()`/`stop()` in-process, `serve_forever()` for the CLI."""

    def __init__(
        self, settings: ControllerSettings, *, verifier: BundleVerifier | None = None
    ) -> None:
        self.settings = settings
        self._verifier = verifier
        self.stats = IngestStats()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self.http_port = settings.http.port
        self._broker_access: BrokerAccess | None = None
        self._keeper_stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.workers: IngestWorkers | None = None

    def _mqtt_ready(self) -> bool:
        workers = self.workers
        return self.ingest.ready and self.publisher.ready and (workers is None or workers.ready)

    @property
    def api_url(self) -> str:
        scheme = "https" if self.settings.http.tls else "http"
        return f"{scheme}://{self.settings.http.host}:{self.http_port}"

    def start(self, timeout: float = 15.0) -> Controller:
        """Migrate, connect and serve; returns once the API answers.

        MQTT connections are waited for up to `timeout` but are not required: they keep
        retrying in the background. Raises ControllerError, sqlalchemy errors.
        """
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        url = s.resolved_database_url()
        upgrade_database(url)
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)
        self.topics = Topics(s.mqtt.topic_prefix)
        # before anything starts: a command key that will not load stops the start cleanly
        log_root_expiry(s.resolved_trust_path(), s.root_expiry_warning_days)
        signer = load_command_signer(s.resolved_command_key_path(), s.command_ttl_s)
        verifier = self._verifier or release_verifier(s.resolved_trust_path(), s.max_bundle_bytes)
        self.bundles = BundleRepository(s.bundle_dir, self.sessions, verifier, s.chunk_size)
        self.publisher = Publisher(s.mqtt, s.max_inflight, f"{s.mqtt.client_id}-pub").start()
        self.commands = CommandSender(self.publisher, self.topics, signer=signer)
        self.enrollment = self._enrollment()
        self.chunks = ChunkServer(
            self.publisher,
            self.bundles,
            self.topics,
            s.chunk_coalesce_s,
            send_rate=s.chunk_send_mb_s * 1e6,
        ).start()

        def public_url() -> str:
            # the API's port is known only once it listens
            return s.resolved_public_url(self.http_port)

        # one key in the database: every replica checks the tokens the others issued
        self.transfer_tokens = TransferTokens(
            load_or_create_key(self.sessions), s.auth.transfer_token_ttl_s
        )
        self.deployer = DeploymentService(
            self.sessions,
            self.bundles,
            self.commands,
            self.chunks,
            public_url=public_url,
            http_transfer_bytes=s.http_transfer_bytes,
            transfer_tokens=self.transfer_tokens,
        )
        journal_dir = s.data_dir / "ingest-journal"
        # with worker processes, they take the bulk channels and this process the rest
        workers = s.ingest.worker_count()
        channels = AGENT_CHANNELS - BULK_CHANNELS if workers else AGENT_CHANNELS
        try:
            ingest = Ingest(
                s.mqtt,
                s.ingest,
                self.sessions,
                hooks=[self.deployer],
                stats=self.stats,
                journal_dir=journal_dir,
                channels=channels,
            )
        except (JournalBusy, OSError) as exc:
            self.chunks.stop()
            self.publisher.stop()
            self.engine.dispose()
            raise ControllerError(f"the ingest journal in {journal_dir}: {exc}") from exc
        self.ingest = ingest.start()
        if workers or retired_workers(s.data_dir, workers):
            config = WorkerConfig(
                s.mqtt,
                s.ingest,
                url,
                s.data_dir,
                s.log_format,
                logging.getLogger().getEffectiveLevel(),
            )
            self.workers = IngestWorkers(config, workers).start()
            self.stats.peers = self.workers.snapshots
        self._started = True
        if self._broker_access is not None:
            self._keeper_stop.clear()
            self._keeper = threading.Thread(
                target=self._keep_broker_certificate,
                args=(self._broker_access,),
                name="broker-certificate",
                daemon=True,
            )
            self._keeper.start()
        self.reconciler = Reconciler(self.sessions, self.deployer)
        self.rollouts = RolloutEngine(
            self.sessions, self.reconciler, self.commands, revert_retry_s=s.rollouts.revert_retry_s
        )
        self.scheduler = RolloutScheduler(
            self.engine,
            self.rollouts.tick,
            tick_s=s.rollouts.tick_s,
            leader_retry_s=s.rollouts.leader_retry_s,
            retention=lambda: apply_retention(
                self.sessions,
                s.ingest.retention_days,
                days_ahead=s.ingest.partition_days_ahead,
            ),
            retention_every_s=s.rollouts.retention_every_s,
        )
        snapshots = SnapshotStore(s.data_dir / "snapshots", s.max_snapshot_bytes)
        self.app = create_app(
            ApiContext(
                sessions=self.sessions,
                bundles=self.bundles,
                deployments=self.deployer,
                commands=self.commands,
                stats=self.stats,
                publisher=self.publisher,
                chunks=self.chunks,
                max_upload_bytes=s.max_bundle_bytes,
                mqtt_ready=self._mqtt_ready,
                trust_path=s.resolved_trust_path(),
                snapshot_requests=SnapshotRequests(
                    snapshots, self.sessions, self.commands, public_url, self.transfer_tokens
                ),
                snapshots=snapshots,
                auth_settings=s.auth,
                transfer_tokens=self.transfer_tokens,
                public_url=s.resolved_public_url(),
                enrollment=self.enrollment,
                rollouts=self.rollouts,
                reconciler=self.reconciler,
            )
        )
        install_dashboard(
            self.app, trust_path=s.resolved_trust_path(), bundle_file=self.bundles.path
        )
        self._serve_http(timeout)
        self._announce_bootstrap()
        if s.rollouts.enabled:
            # the leader (one replica; always this one on SQLite) ticks rollouts and retention
            self.scheduler.start()
        deadline = time.monotonic() + timeout
        parts: list[tuple[str, Ingest | Publisher | IngestWorkers]] = [
            ("ingest", self.ingest),
            ("publisher", self.publisher),
        ]
        if self.workers is not None:
            parts.append(("ingest_workers", self.workers))
        for name, part in parts:
            if not part.wait_ready(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "event=mqtt_not_ready part=%s broker=%s:%d retrying=background",
                    name,
                    s.mqtt.host,
                    s.mqtt.port,
                )
        log.info(
            "event=controller_started api=%s broker=%s:%d database=%s",
            self.api_url,
            s.mqtt.host,
            s.mqtt.port,
            self.engine.url.get_backend_name(),
        )
        return self

    def _announce_bootstrap(self) -> None:
        """While no user exists, print a one-time secret that creates the first admin."""
        secret = make_bootstrap_secret(self.sessions)
        if secret is None:
            return
        # printed once, on purpose: whoever reads the controller's log may create the first admin
        log.warning(
            'event=first_admin_needed secret=%s use="edgefleet users bootstrap NAME '
            '--secret %s --api %s" or POST %s/api/auth/bootstrap '
            "{secret,name,password}; or run `edgefleet users create --admin NAME` here",
            secret,
            secret,
            self.api_url,
            self.api_url,
        )

    def _serve_http(self, timeout: float) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.settings.http.host,
            port=self.settings.http.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=self.settings.http.cert_file,
            ssl_keyfile=self.settings.http.key_file,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ControllerError(
                    f"the API could not listen on {self.settings.http.host}:"
                    f"{self.settings.http.port}"
                )
            time.sleep(0.02)
        sockets = [sock for srv in server.servers for sock in srv.sockets]
        if sockets:
            self.http_port = int(sockets[0].getsockname()[1])

    def _keep_broker_certificate(self, access: BrokerAccess) -> None:
        """Renew the broker's server certificate in its renewal window: at start, then every
        CERTIFICATE_CHECK_S, on every replica that writes the broker's files."""
        while True:
            access.renew_server(datetime.now(timezone.utc))
            if self._keeper_stop.wait(CERTIFICATE_CHECK_S):
                return

    def _enrollment(self) -> EnrollmentService:
        """Device enrollment over the fleet CA; revocations reach the broker when its files
        are ours to write."""
        s = self.settings.enrollment
        ca = CertificateAuthority.load_or_create(
            (s.pki_dir or self.settings.data_dir / "pki") / "fleet"
        )
        hook = None
        if s.broker_files_dir is not None:
            access = BrokerAccess(
                BrokerFiles(s.broker_files_dir),
                ca,
                pid_file_reloader(s.broker_pid_file),
                lambda topic, payload: self.publisher.publish(topic, payload),
            )

            self._broker_access = access

            def hook(device: str, serials: list[tuple[int, datetime]]) -> None:
                access.revoked(device, serials, datetime.now(timezone.utc))

        service = EnrollmentService(
            self.sessions,
            ca,
            cert_valid=timedelta(days=s.cert_days),
            max_pending=s.max_pending,
            on_revoked=hook,
        )
        if s.broker_files_dir is not None:
            # a fresh CRL at every start: the broker refuses every client once one has expired
            now = datetime.now(timezone.utc)
            write_crl(BrokerFiles(s.broker_files_dir), ca, service.revoked_serials(), now)
        return service

    def stop(self) -> None:
        """Stop serving, store and acknowledge what was received, disconnect."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None
        if not self._started:
            return
        self._started = False
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(10)
            self._keeper = None
        self.scheduler.stop()
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        self.ingest.stop()
        self.chunks.stop()
        self.publisher.stop()
        self.engine.dispose()
        log.info("event=controller_stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly.

        Under systemd (Type=notify): READY=1 once the API answers, WATCHDOG=1 while the HTTP
        server lives (a dead one stops the pings and the loop), STOPPING=1 on the way out.
        """
        done = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("event=controller_signal signal=%s", signal.Signals(signum).name)
            done.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        ping_every = watchdog_interval()
        next_ping = 0.0
        try:
            self.start()
            sd_notify(f"READY=1\nSTATUS=serving {self.api_url}")
            while True:
                if self._thread is not None and not self._thread.is_alive():
                    log.error("event=http_server_exited")
                    break
                if ping_every and time.monotonic() >= next_ping:
                    sd_notify("WATCHDOG=1")
                    next_ping = time.monotonic() + ping_every
                if done.wait(min(1.0, ping_every) if ping_every else 1.0):
                    break
        finally:
            sd_notify("STOPPING=1")
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
