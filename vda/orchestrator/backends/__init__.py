"""Backends start one worker per device behind one contract (base.py): local processes, Docker containers."""
