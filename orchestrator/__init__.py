"""Host side: planning, backends (local, docker), scheduling, progress and the `vda` CLI."""
