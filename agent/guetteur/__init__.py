"""Guetteur: the agent of a city video-protection camera gateway."""

__version__ = "0.1.0"
