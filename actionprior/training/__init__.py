"""Training: the LightningModules, their optimiser/schedule helpers, metrics, checkpoints and the CLI."""

from actionprior.training.action_prior_module import ActionPriorModule
from actionprior.training.transfer import ActionPriorTransfer
from actionprior.training.vla_module import VLAModule

__all__ = ["ActionPriorModule", "ActionPriorTransfer", "VLAModule"]
