"""VLM backbones: the :class:`VLMBackbone` wrapper, its token-layout paths, and offline model builders.

* ``wrapper.py``  -- :class:`VLMBackbone` (construction, checkpoint spec, extra-token hook, forward);
* ``generic.py``  -- the processor-driven path for any image-text model;
* ``qwen.py``, ``smolvlm.py`` -- per-family fast paths (adapters);
* ``layout_cache.py`` -- the per-layout tensor cache the Qwen adapters use;
* ``tiny.py``     -- tiny random-weight models of real architectures (``tiny:<family>``; families in
  ``tiny_families.py``, tokenizer in ``tiny_tokenizer.py``) and, in ``random_backbones.py``, full-size
  random ones (``random:qwen3_vl_2b``), built offline.
"""

from actionprior.models.backbones.common import (
    FamilyAdapter,
    PreparedInputs,
    frames_per_sample,
    pick_attn_implementation,
)
from actionprior.models.backbones.generic import GenericPath, UnsupportedBackbone
from actionprior.models.backbones.layout_cache import LayoutCache
from actionprior.models.backbones.wrapper import ADAPTERS, VLMBackbone

__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "GenericPath",
    "LayoutCache",
    "PreparedInputs",
    "UnsupportedBackbone",
    "VLMBackbone",
    "frames_per_sample",
    "pick_attn_implementation",
]
