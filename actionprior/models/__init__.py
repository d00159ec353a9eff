"""Plain ``nn.Module``s (no Lightning): embodiment I/O, action encoder, flow decoder, flow-matching maths, VLA.

Only the light Stage 1 classes are re-exported here; the VLM-backed modules import transformers and are
imported from their own modules.
"""

from actionprior.models.action_prior import ActionPrior, ActionPriorConfig

__all__ = ["ActionPrior", "ActionPriorConfig"]
