"""A controller's ingest journal belongs to one process: a second controller on the same
data_dir is refused at start with a clear error, and the first goes on."""

from __future__ import annotations

import pytest

from controller.server import Controller, ControllerError
from controller.settings import ControllerSettings, HttpSettings, MqttSettings


def settings(tmp_path, port: int, client_id: str) -> ControllerSettings:
    return ControllerSettings(
        data_dir=tmp_path / "controller",
        mqtt=MqttSettings(port=port, client_id=client_id),
        http=HttpSettings(port=0),
    )


def test_a_second_controller_on_the_same_data_dir_is_refused(tmp_path, mosquitto):
    first = Controller(settings(tmp_path, mosquitto.port, "journal-a")).start()
    try:
        with pytest.raises(ControllerError, match="data_dir of its own"):
            Controller(settings(tmp_path, mosquitto.port, "journal-b")).start()
        assert first.ingest.wait_ready(10)
        assert (tmp_path / "controller" / "ingest-journal" / "journal.id").is_file()
    finally:
        first.stop()
    # free again once the first has stopped
    again = Controller(settings(tmp_path, mosquitto.port, "journal-a")).start()
    again.stop()
