"""Hot swap while frames flow from a real grabber: no frame is lost to the swap."""

from __future__ import annotations

import threading

from agent.pipeline.settings import CameraSettings
from agent.pipeline.workers import Pipeline
from controller.demo.sample_video import Placement, write_sample_video
from controller.demo.waiting import wait_until
from tests.agent.pipeline.test_pipeline import blazeface


def test_a_swap_while_frames_flow_loses_no_frame_and_closes_the_old_model_after(
    tmp_path, blazeface_model
):
    video = write_sample_video(
        tmp_path / "a.avi", fps=15, seconds_per_image=1.0, scenes=[("a", Placement("astronaut"))]
    )
    camera = CameraSettings(id="cam0", source=str(video.path), loop=True, realtime=True)
    pipeline = Pipeline([camera], lambda *a: None, lambda: None)
    worker = pipeline.workers[0]
    old = blazeface(blazeface_model, version=1)
    closed = threading.Event()
    old_close = old.close

    def close_old() -> None:
        # closing while a frame still runs on it would be the bug this guards against
        assert not worker.busy.locked() or pipeline.current() is not old
        old_close()
        closed.set()

    old.close = close_old
    pipeline.swap(old)
    pipeline.start()
    try:
        wait_until("frames on the old model", lambda: worker.stages.processed_by[old.label] >= 10)
        # the new model loads beside the running one while frames keep flowing
        new = blazeface(blazeface_model, version=2)
        before = worker.stages.processed_by[old.label]
        # the old model kept working while the new one loaded; the swap comes between frames
        wait_until(
            "old model still running", lambda: worker.stages.processed_by[old.label] > before + 2
        )
        assert pipeline.swap(new) is old
        assert pipeline.retire(old, timeout=5)
        old.close()
        wait_until("frames on the new model", lambda: worker.stages.processed_by[new.label] >= 10)
    finally:
        pipeline.stop()
    stages, counters = worker.stages, worker.counters
    assert closed.is_set()
    assert stages.processed_by[old.label] >= before
    # exactly one switch, from the last frame on the old model straight to the next frame
    assert len(stages.switches) == 1
    old_label, new_label, last_old, first_new = stages.switches[0]
    assert (old_label, new_label) == (old.label, new.label)
    assert first_new == last_old + 1, stages.switches
    assert stages.skipped_no_model == 0 and stages.failed == 0
    # every frame that came in was processed or skipped for a reason counted elsewhere
    accounted = counters.frames_processed + worker.frames_skipped
    assert 0 <= counters.frames_in - accounted <= 2, (counters, stages)
    assert sum(stages.processed_by.values()) == counters.frames_processed
    new.close()
