"""Using merged depth: 3D tracks from 2D detections, point clouds, plots. Runs anywhere, without a GPU."""
