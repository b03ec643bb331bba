"""What runs on a device: the runtime seam, the window and stream runners, the single pass, the device worker."""
