"""Training: the LightningModules, their optimiser/schedule helpers, metrics, checkpoints and the CLI."""

from actionprior.training.action_prior_module import ActionPriorModule

__all__ = ["ActionPriorModule"]
