"""What runs inside the container: the model, long-video inference, video IO, stitching, writers, worker, merge."""

import os

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # cv2 reads it once; set before anything imports cv2
