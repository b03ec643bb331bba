"""The `vda` command line: argument parsing and the one-line error contract (main.py), analysis commands (tools.py)."""
