"""Which transport a deployment offers, and the offered URL served by the real API."""

from __future__ import annotations

import httpx
import pytest

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
    assert offered(controller, agent, bundle.digest).url == file_url
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
        path = fetch_bundle(client, Wanted(url, bundle.digest, bundle.size), downloads)
    assert path.read_bytes() == data
    assert ranges == ["bytes=70000-"]


def test_public_url_defaults_to_the_api_listener():
    settings = ControllerSettings(http=HttpSettings(host="10.0.0.5", port=8080))
    assert settings.resolved_public_url() == "http://10.0.0.5:8080"
    assert settings.resolved_public_url(43210) == "http://10.0.0.5:43210"
    assert settings.http_transfer_bytes == 8 << 20
    custom = ControllerSettings(public_url="https://fleet.example.com/edge/")
    assert custom.resolved_public_url() == "https://fleet.example.com/edge"
    with pytest.raises(ValueError):
        ControllerSettings(public_url="ftp://fleet.example.com")
