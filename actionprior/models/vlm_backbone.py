"""Moved to :mod:`actionprior.models.backbones`; this re-export keeps old imports working."""

from actionprior.models.backbones import *  # noqa: F403
from actionprior.models.backbones import __all__  # noqa: F401
