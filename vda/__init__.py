"""Video Depth Anything over long videos on many devices. The one import name of this project.

Sub-packages, from the bottom up: `core` (pure math and plan types), `model` (network, checkpoints), `io` (video,
depth files, run folders), `pipeline` (inference, device worker, merge), `analysis` (tracks, point clouds, plots),
`orchestrator` (planning, queue, backends) and `cli`. `config`, `errors` and `events` are shared by all of them.
"""

import os

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # cv2 reads it once; set before anything imports cv2
