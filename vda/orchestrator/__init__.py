"""Host side: planning, the work queue, disk-space checks, progress, and the backends that start device workers."""
