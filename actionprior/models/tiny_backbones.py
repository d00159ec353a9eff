"""Moved to :mod:`actionprior.models.backbones.tiny`; this re-export keeps old imports working."""

from actionprior.models.backbones.tiny import *  # noqa: F403
from actionprior.models.backbones.tiny import __all__  # noqa: F401
