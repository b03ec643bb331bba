"""A folder of images as a `Decoder`: files in name order, read by OpenCV, resized with cv2.resize."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from vda.core.video_info import VideoInfo
from vda.io.decoder import Decoder
from vda.io.probe import VideoError, image_files, read_image


class ImageDecoder(Decoder):
    """Frames of an image folder probed as `info`; every image must have the first one's size."""

    def __init__(self, info: VideoInfo, size: tuple[int, int] | None = None):
        self.info = info
        self.resize = None if size is None or size == (info.width, info.height) else size
        self.files = image_files(Path(info.path))

    def span(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(start, stop):
            img = read_image(self.files[i])
            if (img.shape[1], img.shape[0]) != (self.info.width, self.info.height):
                raise VideoError(
                    f"image {self.files[i].name} is {img.shape[1]}x{img.shape[0]}, the first is "
                    f"{self.info.width}x{self.info.height}; all images of a sequence must have one size"
                )
            self.next_index = i + 1
            yield i, img if self.resize is None else cv2.resize(img, self.resize)

    def close(self) -> None:
        pass
