"""The pinhole camera that turns depth maps and 2D detections into 3D camera coordinates.

The contract, shared by `vda track` and `vda pointcloud`:

- Axes: X right, Y down, Z forward (OpenCV). A pixel (u, v) at depth Z (along the optical axis, not the Euclidean
  range) is X = (u - cx) * Z / fx, Y = (v - cy) * Z / fy.
- Pixels: intrinsics are in pixels of one image, pixel (i, j) has its centre at (i, j); `Intrinsics.scaled` and
  `to_depth_pixels` move them to another resolution of the same image (the depth maps after --max-res).
- Default: fx = fy = 470.4 * W / 640, cx = (W - 1) / 2, cy = (H - 1) / 2. 470.4 is the default focal of the authors'
  depth_to_pointcloud.py scripts, which use it unscaled at any resolution; we read it as the focal of a 640-wide frame
  (68.5 degrees horizontal field of view) and keep that field of view at every resolution. `fov` (horizontal,
  degrees) gives fx = fy = (W / 2) / tan(fov / 2); fx or fy alone sets both (square pixels).
- Flags that cannot make a camera raise `IntrinsicsError` (a `vda.errors.UsageError`) naming the flag and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vda.errors import UsageError

DEFAULT_FOCAL = 470.4  # the authors' default focal length, read as pixels of a 640-wide frame
DEFAULT_FOCAL_WIDTH = 640


class IntrinsicsError(UsageError):
    """Inconsistent camera intrinsics flags; the message names the problem and the fix."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of a `width` x `height` image (pixel centres at integer coordinates)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    source: str = "given"

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for the image resized to width x height (pixel centres move as (u + 0.5) * s - 0.5)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            width,
            height,
            self.source,
        )

    def as_dict(self) -> dict:
        return {
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "image_size": [self.width, self.height],
            "source": self.source,
        }


def resolve_intrinsics(
    width: int,
    height: int,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    fov: float | None = None,
) -> Intrinsics:
    """Intrinsics from the flags: --fov, or --fx/--fy (one sets both: square pixels), else the scaled default."""
    if width <= 0 or height <= 0:
        raise IntrinsicsError(f"image size {width}x{height} is not positive; pass --image-size WxH")
    if fov is not None and (fx is not None or fy is not None):
        raise IntrinsicsError("--fov and --fx/--fy both set the focal length; pass one of them")
    for name, value in (("--fx", fx), ("--fy", fy)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise IntrinsicsError(f"{name} {value} is not a positive number of pixels; pass e.g. {name} 1000")
    for name, value in (("--cx", cx), ("--cy", cy)):
        if value is not None and not math.isfinite(value):
            raise IntrinsicsError(f"{name} {value} is not a finite number of pixels; pass the principal point")
    if fov is not None:
        if not (math.isfinite(fov) and 0 < fov < 180):
            raise IntrinsicsError(f"--fov {fov} is not an angle in (0, 180) degrees; pass the horizontal field of view")
        fx = fy = (width / 2) / math.tan(math.radians(fov) / 2)
        source = f"--fov {fov:g} degrees (horizontal)"
    elif fx is None and fy is None:
        fx = fy = DEFAULT_FOCAL * width / DEFAULT_FOCAL_WIDTH
        source = f"default: f = {DEFAULT_FOCAL} * W / {DEFAULT_FOCAL_WIDTH}"
    else:
        fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
        source = "given"
    cx = (width - 1) / 2 if cx is None else cx
    cy = (height - 1) / 2 if cy is None else cy
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), width, height, source)


def backproject(u, v, z, k: Intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel (u, v) at depth z -> camera (X, Y, Z): X = (u - cx) Z / fx, Y = (v - cy) Z / fy."""
    u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, z))
    return (u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z


def to_depth_pixels(x: float, y: float, src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, float]:
    """A coordinate in an image of size src (w, h) -> the same spot in the depth map of size dst (w, h)."""
    return (x + 0.5) * dst[0] / src[0] - 0.5, (y + 0.5) * dst[1] / src[1] - 0.5
