"""The network (DINOv2 encoder, temporal DPT head), checkpoint loading, the published checkpoints, synthetic weights."""
