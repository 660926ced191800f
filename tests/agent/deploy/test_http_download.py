"""The agent's HTTP delivery: a background download that ends in the same install path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.deploy.deployer import DeviceDeployer
from agent.deploy.http_download import HttpDownloads
from agent.deploy.installer import Installer
from agent.link.events import EventReporter
from agent.link.origin import ControllerOrigin, ForeignOrigin
from ota.http_fetch import RetryPolicy
from ota.install import SlotStore
from ota.trust_file import save_trust_store
from protocol.messages import BundleOffer, Deploy, Event


class _Files(BaseHTTPRequestHandler):
    """Serves one byte string; `hang` makes it send headers and then nothing."""

    protocol_version = "HTTP/1.1"
    body = b""
    hang = False
    release = threading.Event()

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.hang:
            self.release.wait(5)
            self.close_connection = True
            return
        self.wfile.write(self.body)


@pytest.fixture
def serve() -> Iterator:
    servers: list[tuple[ThreadingHTTPServer, type[_Files]]] = []

    def start(body: bytes, hang: bool = False) -> str:
        handler = type(
            "Files", (_Files,), {"body": body, "hang": hang, "release": threading.Event()}
        )
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append((httpd, handler))
        return f"http://127.0.0.1:{httpd.server_address[1]}/bundle"

    yield start
    for httpd, handler in servers:
        handler.release.set()
        httpd.shutdown()
        httpd.server_close()


def _offer(built, url: str) -> Deploy:
    return Deploy(
        device="cam-01",
        bundle=BundleOffer(
            name=built.manifest.name,
            version=built.manifest.version,
            digest=built.digest,
            size=built.size,
            chunk_size=65536,
            chunks=-(-built.size // 65536),
            url=url,
        ),
    )


def _deployer(
    tmp_path: Path, trust, events: list[Event], activated: list, subscribed: list | None = None
) -> DeviceDeployer:
    """A deployer whose events land in `events` and bundle subscriptions in `subscribed`."""
    subscribed = [] if subscribed is None else subscribed
    save_trust_store(trust, tmp_path / "trust.json")
    store = SlotStore(tmp_path / "store")
    reporter = EventReporter("cam-01", store=events.append, send_now=events.append)
    installer = Installer(
        store=store,
        trust_file=tmp_path / "trust.json",
        events=reporter,
        activate=activated.append,
    )
    return DeviceDeployer(
        store=store,
        installer=installer,
        downloads=tmp_path / "downloads",
        subscribe=subscribed.append,
        unsubscribe=lambda digest: None,
        events=reporter,
    )


def test_an_offer_with_a_url_is_downloaded_over_http_and_installed(
    tmp_path, trust, build_blazeface, serve
):
    built = build_blazeface(version=1)
    url = serve(built.path.read_bytes())
    events: list[Event] = []
    activated: list = []
    subscribed: list = []
    deployer = _deployer(tmp_path, trust, events, activated, subscribed)
    deployer.on_deploy(_offer(built, url))
    # the control thread is not held up: the offer is acknowledged before any byte arrives
    assert [e.kind for e in events] == ["deploy_offered"]
    assert deployer.http.join(10)
    deployer.tick()
    kinds: list[str] = [e.kind for e in events]
    assert subscribed == [] and "chunk_request" not in kinds
    assert kinds.index("downloading") < kinds.index("verified") < kinds.index("running")
    progress = [e.progress for e in events if e.kind == "downloading" and e.progress is not None]
    assert len(progress) == kinds.count("downloading")
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert activated[0].digest == built.digest
    current = deployer.store.current()
    assert current is not None and current.digest == built.digest
    # the downloaded file is not kept once installed
    assert not (tmp_path / "downloads" / f"{built.digest}.bundle").exists()


def test_a_stalled_download_is_retried_then_reported_failed(
    tmp_path, trust, build_blazeface, serve
):
    built = build_blazeface(version=1)
    url = serve(built.path.read_bytes(), hang=True)
    events: list[Event] = []
    deployer = _deployer(tmp_path, trust, events, [])
    deployer.http = HttpDownloads(
        tmp_path / "downloads",
        policy=RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02, read_timeout_s=0.2),
    )
    deployer.on_deploy(_offer(built, url))
    assert deployer.http.join(10)
    deployer.tick()
    retries = [e for e in events if e.kind == "downloading" and e.level == "warning"]
    assert len(retries) == 1 and retries[0].reason == "stalled"
    failed = [e for e in events if e.kind == "failed"]
    assert len(failed) == 1 and failed[0].reason == "stalled"
    assert failed[0].bundle == built.digest
    assert deployer.store.current() is None
    assert not deployer.http.active(built.digest)


def test_a_repeated_offer_while_downloading_does_not_start_a_second_download(
    tmp_path, build_blazeface, serve
):
    built = build_blazeface(version=1)
    url = serve(built.path.read_bytes(), hang=True)
    downloads = HttpDownloads(
        tmp_path / "downloads",
        policy=RetryPolicy(attempts=1, read_timeout_s=0.3),
    )
    first, again = _offer(built, url), _offer(built, url)
    assert downloads.start(first.bundle, first.id)
    assert not downloads.start(again.bundle, again.id)
    assert downloads.join(10)
    updates = downloads.poll()
    assert [u.kind for u in updates] == ["failed"]
    assert updates[0].cmd_id == again.id  # reported against the newest command


def test_a_restart_mid_download_takes_the_http_download_up_again(
    tmp_path, trust, build_blazeface, serve
):
    built = build_blazeface(version=1)
    data = built.path.read_bytes()
    url = serve(data)
    # what a killed run leaves: the offer on record and part of the file on disk
    first = _deployer(tmp_path, trust, [], [])
    first.http = HttpDownloads(tmp_path / "downloads", policy=RetryPolicy(attempts=1))
    first.on_deploy(_offer(built, url))
    assert first.http.join(10)
    (tmp_path / "downloads" / f"{built.digest}.bundle").unlink()
    (tmp_path / "downloads" / f"{built.digest}.http.part").write_bytes(data[: len(data) // 2])

    events: list[Event] = []
    activated: list = []
    restarted = _deployer(tmp_path, trust, events, activated)
    restarted.resume()
    assert restarted.http.active(built.digest)
    assert events[0].kind == "downloading" and events[0].message == "resumed over HTTP"
    assert restarted.http.join(10)
    restarted.tick()
    assert "running" in [e.kind for e in events]
    assert activated[0].digest == built.digest
    # installed: the offer is forgotten, so a later restart does not fetch it again
    again: list = []
    _deployer(tmp_path, trust, again, []).resume()
    assert again == []


def test_a_download_outside_the_controller_origin_never_starts(tmp_path: Path) -> None:
    downloads = HttpDownloads(tmp_path, origin=ControllerOrigin("https://controller.example:8443"))
    offer = BundleOffer(
        name="face",
        version=1,
        digest="a" * 64,
        size=10,
        chunk_size=10,
        chunks=1,
        url="https://elsewhere.example:8443/api/bundles/x/file",
    )
    with pytest.raises(ForeignOrigin):
        downloads.start(offer, "cmd-00001")
    assert not downloads.active(offer.digest)
    assert list(tmp_path.iterdir()) == []


def test_the_controller_origin_matches_scheme_host_and_port_only() -> None:
    origin = ControllerOrigin("https://Controller.example")
    assert origin.check("https://controller.example:443/api/bundles/x/file")
    for url in (
        "http://controller.example/api",
        "https://controller.example:444/api",
        "https://controller.example.evil/api",
        "https://user@controller.example/api",
        "file:///etc/passwd",
    ):
        with pytest.raises(ForeignOrigin):
            origin.check(url)
    loopback = ControllerOrigin(fallback_host="127.0.0.1")
    assert loopback.check("http://127.0.0.1:41234/api/bundles/x/file")
    with pytest.raises(ForeignOrigin):
        loopback.check("http://10.0.0.1:41234/api")


def _fleet_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A fleet CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key) PEMs."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject: str, key, issuer: str, signer, ca: bool, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("fleet ca", ca_key, "fleet ca", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = cert("controller", key, "fleet ca", ca_key, False, san)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_https_downloads_trust_the_fleet_ca_and_nothing_else(tmp_path: Path) -> None:
    import hashlib
    import ssl

    ca, cert, key = _fleet_ca(tmp_path)
    body = b"bundle bytes " * 100
    handler = type("Files", (_Files,), {"body": body, "release": threading.Event()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    origin = f"https://127.0.0.1:{httpd.server_address[1]}"
    offer = BundleOffer(
        name="face",
        version=1,
        digest=hashlib.sha256(body).hexdigest(),
        size=len(body),
        chunk_size=1024,
        chunks=-(-len(body) // 1024),
        url=f"{origin}/bundle",
    )
    policy = RetryPolicy(attempts=1, base_delay_s=0.01, max_delay_s=0.01, read_timeout_s=2)
    try:
        outcomes = []
        for ca_file, folder in ((ca, "with-ca"), (None, "system-cas")):
            downloads = HttpDownloads(
                tmp_path / folder, policy=policy, origin=ControllerOrigin(origin, ca_file=ca_file)
            )
            downloads.start(offer, "cmd-00001")
            assert downloads.join(10)
            [last] = [u for u in downloads.poll() if u.kind in ("done", "failed")]
            outcomes.append(last)
        with_ca, without = outcomes
        assert with_ca.kind == "done" and with_ca.path is not None
        assert with_ca.path.read_bytes() == body
        # the system's CAs do not know the fleet CA: the server is not believed
        assert without.kind == "failed" and "CERTIFICATE_VERIFY_FAILED" in without.message
    finally:
        httpd.shutdown()
        httpd.server_close()
