"""LoRA adapters on the VLM backbone, through ``peft``: settings, injection, merging, the frozen base's identity.

``vla.lora`` (:class:`LoRAConfig`) puts low-rank adapters on the language model's projections (by default
attention q/k/v/o and the MLP's gate/up/down) and, with ``vision_tower: true``, on every linear layer of the
vision side (vision tower and projector). The backbone's own weights are frozen; the action module (action
head, query tokens, latent head, state/history tokens) trains fully, as without LoRA.

Adapters are injected into the Hugging Face model in place (``peft.inject_adapter_in_model``), so the backbone
keeps its module tree (the extra-token hook, the family adapters' references) and only the targeted
``nn.Linear`` become ``peft`` LoRA layers (``<name>.base_layer`` + ``<name>.lora_A/B``). :func:`merge_lora`
folds them back into plain ``nn.Linear`` (``actionprior export``'s default).

``quantize: nf4`` is QLoRA: the base loaded in 4 bit through bitsandbytes, which runs on CUDA GPUs only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZE = ("nf4",)


@dataclass
class LoRAConfig:
    """The adapters' settings (``model.init_args.vla.lora``; unset = no LoRA).

    Args:
        rank: the adapters' rank r.
        alpha: scaling numerator (the update is ``alpha / rank * B A x``).
        dropout: dropout on the adapters' input (training only).
        target_modules: names of the language model's linear layers that get adapters (the last name part,
            e.g. ``q_proj``); every name must exist in the backbone's language model.
        vision_tower: also adapt every linear layer of the vision tower and projector (off: they stay frozen).
        quantize: ``nf4`` = QLoRA (4-bit base through bitsandbytes; CUDA only); None = the base as loaded.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    vision_tower: bool = False
    quantize: str | None = None

    def __post_init__(self) -> None:
        self.target_modules = list(self.target_modules)
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            problems.append("target_modules is empty")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            problems.append(f"quantize must be one of {QUANTIZE} or null, got '{self.quantize}'")
        if problems:
            raise ValueError("invalid vla.lora: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRAConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"vla.lora: unknown keys {sorted(unknown)}")
        return cls(**data)


def check_quantize_available(config: LoRAConfig) -> None:
    """QLoRA's one-line refusal where it cannot run (before any weight is loaded)."""
    if config.quantize is None:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"vla.lora.quantize: {config.quantize} (QLoRA) needs bitsandbytes, which runs on CUDA GPUs only, and "
            "this machine has none: use configs/finetune/lora.yaml (LoRA on an unquantised base)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("vla.lora.quantize: QLoRA needs bitsandbytes: pip install bitsandbytes") from None


def quantization_config(config: LoRAConfig) -> Any:
    """The ``transformers`` 4-bit config of QLoRA (NF4 weights, bfloat16 compute, double quantisation)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def _linear_names(root: nn.Module, prefix: str) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = []
    for name, module in root.named_modules():
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            out.append(f"{prefix}{name}" if name else prefix.rstrip("."))
    return out


def lora_targets(model: nn.Module, config: LoRAConfig, source: str = "") -> list[str]:
    """Full names of the linear layers that get adapters; refuses target names the language model lacks."""
    decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    if decoder is None or decoder is model:
        raise ValueError(
            f"LoRA: backbone '{source}' ({type(model).__name__}) exposes no separate language model (get_decoder)"
        )
    prefix = next(name for name, m in model.named_modules() if m is decoder) + "."
    language = [n for n in _linear_names(decoder, prefix) if n.startswith(prefix)]
    found = {n.rsplit(".", 1)[-1] for n in language}
    missing = [t for t in config.target_modules if t not in found]
    if missing:
        raise ValueError(
            f"vla.lora.target_modules {missing} do not exist in the language model of backbone '{source}' "
            f"({type(model).__name__}); its linear layers are named {sorted(found)}"
        )
    wanted = set(config.target_modules)
    targets = [n for n in language if n.rsplit(".", 1)[-1] in wanted]
    if config.vision_tower:
        targets += [n for n in _linear_names(model, "") if not n.startswith(prefix)]
    return targets


def apply_lora(model: nn.Module, config: LoRAConfig, source: str = "") -> list[str]:
    """Inject adapters into ``model`` in place and freeze everything of it but the adapters; returns the
    adapted layers' names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_targets(model, config, source)
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(peft_config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_key(name))
    return targets


def is_adapter_key(name: str) -> bool:
    """A parameter/state-dict key of a LoRA adapter (``...lora_A.default.weight``)."""
    return ".lora_" in name or name.startswith("lora_")


def has_adapters(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def base_key(name: str) -> str:
    """The key a LoRA-wrapped layer's base weight has without the adapter (``q_proj.base_layer.weight`` ->
    ``q_proj.weight``)."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def merge_lora(module: nn.Module) -> int:
    """Fold every adapter into its base weight and put the plain base layer back; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(layers)


@torch.no_grad()
def copy_base_weights(target: nn.Module, source_state: Mapping[str, torch.Tensor]) -> None:
    """Copy a plain (adapter-free) state dict into ``target``'s base weights in place; adapters keep theirs."""
    own = target.state_dict(keep_vars=True)
    wanted = {key: base_key(key) for key in own if not is_adapter_key(key)}
    missing = [src for src in wanted.values() if src not in source_state]
    if missing:
        raise ValueError(f"copy_base_weights: the source lacks {missing[:5]}; same architecture needed")
    for key, src in wanted.items():
        if own[key].shape != source_state[src].shape:
            raise ValueError(
                f"copy_base_weights: '{src}' is {tuple(source_state[src].shape)} in the source but "
                f"{tuple(own[key].shape)} here; same architecture needed"
            )
        own[key].copy_(source_state[src])


@torch.no_grad()
def frozen_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``module``'s frozen parameters: the identity of
    the base a LoRA checkpoint's adapters were trained on (the checkpoint leaves these weights out)."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(remove_duplicate=False), key=lambda kv: kv[0]):
        if param.requires_grad:
            continue
        data = param.detach().to("cpu").contiguous()
        digest.update(f"{base_key(name)}|{data.dtype}|{tuple(data.shape)}\n".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]
