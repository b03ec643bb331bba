"""What runs on a device: batched inference, the device worker that computes queue units, and the merge."""
