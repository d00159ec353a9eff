"""Launchers for actionprior training: SLURM, torchrun, Lightning AI jobs, and the Makefile's entry point.

Nothing here imports torch, Lightning or lightning-sdk at import time, so the launchers start instantly on a
login node; lightning-sdk (the ``cloud`` extra) is imported only when a Lightning AI job is really submitted.
"""

from lightning_apps.command import LaunchError, TrainCommand

__all__ = ["LaunchError", "TrainCommand"]
