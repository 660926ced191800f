"""Which transport a deployment offers, and the offered URL served by the real API."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from controller.auth.transfer import TransferPurpose
from controller.demo.waiting import wait_until
from controller.fleet.deployments import HttpTransportUnavailable
from controller.settings import ControllerSettings, HttpSettings
from ota.http_fetch import Wanted, fetch_bundle, part_path
from protocol.messages import Deploy
from tests.controller.fake_agents import FakeAgent

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def agent(mosquitto, controller):
    fake = FakeAgent(mosquitto.host, mosquitto.port, "cam-http")
    fake.subscribe(fake.topics.cmd(fake.device))
    fake.online(profile="rpi4")
    wait_until("device known", lambda: _known(controller))
    yield fake
    fake.close()


def _known(controller) -> bool:
    from controller.db import Device

    with controller.sessions() as session:
        return session.get(Device, "cam-http") is not None


def offered(controller, agent, digest, transport="auto"):
    controller.deployer.deploy(agent.device, digest, transport=transport)
    command = agent.next_command()
    assert isinstance(command, Deploy)
    return command.bundle


@sqlite_only
def test_small_bundles_go_as_chunks_large_ones_and_http_requests_as_a_url(
    controller, agent, make_bundle
):
    deployer = controller.deployer
    deployer.public_url = lambda: controller.api_url + "/"
    bundle = controller.bundles.add_file(make_bundle(model_bytes=50_000).path)
    file_url = f"{controller.api_url}/api/bundles/{bundle.digest}/file"

    deployer.http_transfer_bytes = bundle.size + 1
    assert offered(controller, agent, bundle.digest).url is None
    assert offered(controller, agent, bundle.digest, "http").url == file_url

    deployer.http_transfer_bytes = bundle.size
    offer = offered(controller, agent, bundle.digest)
    assert offer.url == file_url
    # the offer carries the token that opens this file for this device only
    assert controller.transfer_tokens.check(offer.token, TransferPurpose.BUNDLE_FILE, bundle.digest)
    assert offered(controller, agent, bundle.digest, "mqtt").url is None


@sqlite_only
def test_http_without_a_public_url_is_refused_and_nothing_is_recorded(
    controller, agent, make_bundle
):
    controller.deployer.public_url = None
    bundle = controller.bundles.add_file(make_bundle().path)
    with pytest.raises(HttpTransportUnavailable):
        controller.deployer.deploy(agent.device, bundle.digest, transport="http")
    assert controller.deployer.list(agent.device) == []
    # auto falls back to chunks when there is no URL to offer
    controller.deployer.http_transfer_bytes = 1
    assert offered(controller, agent, bundle.digest).url is None


@sqlite_only
def test_the_offered_url_resumes_a_partial_download_from_the_real_api(
    controller, make_bundle, tmp_path
):
    built = make_bundle(model_bytes=200_000)
    bundle = controller.bundles.add_file(built.path)
    url = f"{controller.api_url}/api/bundles/{bundle.digest}/file"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    data = built.path.read_bytes()
    part_path(downloads, bundle.digest).write_bytes(data[:70_000])
    ranges: list[str | None] = []
    with httpx.Client(
        event_hooks={"request": [lambda r: ranges.append(r.headers.get("range"))]}
    ) as client:
        # the token a deploy offer to cam-a carries: without it the file is refused
        token = controller.transfer_tokens.issue(
            TransferPurpose.BUNDLE_FILE, bundle.digest, "cam-a"
        )
        assert client.get(url).status_code == 401
        path = fetch_bundle(client, Wanted(url, bundle.digest, bundle.size, token), downloads)
    assert path.read_bytes() == data
    assert ranges == [None, "bytes=70000-"]


def test_public_url_defaults_to_the_api_listener():
    tls = {"cert_file": Path("api.pem"), "key_file": Path("api.key")}
    settings = ControllerSettings(http=HttpSettings(host="10.0.0.5", port=8080, **tls))
    assert settings.resolved_public_url() == "https://10.0.0.5:8080"
    assert settings.resolved_public_url(43210) == "https://10.0.0.5:43210"
    local = ControllerSettings(http=HttpSettings(host="127.0.0.1", port=8080))
    assert local.resolved_public_url() == "http://127.0.0.1:8080"
    assert settings.http_transfer_bytes == 8 << 20
    custom = ControllerSettings(public_url="https://fleet.example.com/edge/")
    assert custom.resolved_public_url() == "https://fleet.example.com/edge"
    with pytest.raises(ValueError):
        ControllerSettings(public_url="ftp://fleet.example.com")


@sqlite_only
def test_mqtt_offers_carry_each_chunks_digest_and_http_offers_none(controller, agent, make_bundle):
    controller.deployer.public_url = lambda: controller.api_url
    built = make_bundle(model_bytes=200_000)
    bundle = controller.bundles.add_file(built.path)
    offer = offered(controller, agent, bundle.digest, "mqtt")
    data = built.path.read_bytes()
    size = offer.chunk_size
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    assert offer.chunks == len(pieces) > 1
    assert offer.chunk_digests == tuple(hashlib.sha256(p).hexdigest() for p in pieces)
    assert offered(controller, agent, bundle.digest, "http").chunk_digests == ()


@sqlite_only
def test_repeated_chunk_requests_resend_a_bundle_only_up_to_the_limit(
    controller, agent, make_bundle
):
    bundle = controller.bundles.add_file(make_bundle(model_bytes=200_000).path)
    offer = offered(controller, agent, bundle.digest, "mqtt")
    agent.subscribe(agent.topics.bundle_chunks(bundle.digest))
    chunks = controller.chunks
    passes = chunks.limit.passes
    for _ in range(passes):
        agent.request_chunks(bundle.digest, (0, offer.chunks - 1))
        assert len(agent.take_chunks(offer.chunks)) == offer.chunks
    agent.request_chunks(bundle.digest, (0, offer.chunks - 1))
    wait_until("request limited", lambda: chunks.requests_limited == 1)
    assert chunks.chunks_limited == offer.chunks
    assert chunks.chunks_sent == passes * offer.chunks
