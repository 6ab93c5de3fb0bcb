"""A live fleet on one machine: emulated engines, a frontend and a trace replay beside ``simulate``."""
