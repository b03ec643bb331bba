"""Pure computation, no device and no files: the window schedule, the scale/shift chain, blending, the plan types."""
