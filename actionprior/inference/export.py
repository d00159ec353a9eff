"""A trained policy as a folder to share: safetensors weights and JSON, no pickle anywhere.

``actionprior export --ckpt runs/stage2/checkpoints/last.ckpt --out my-policy`` writes::

    my-policy/
      model.safetensors     the VLA's weights
      actionprior.json      model configs, embodiment specs, normalisation statistics (+ fingerprints),
                            camera order, image size, history length
      backbone/             the backbone's config, tokenizer and image-processor files (save_pretrained)
      README.md             what it is and how to load it

A LoRA checkpoint's adapters are merged into the weights (``--keep-adapters`` keeps them apart).
``Policy.from_pretrained("my-policy")`` loads it offline; a hub repository holding such a folder loads the
same way where a hub is reachable. Everything read back is untrusted: JSON is size-capped, weights are read
by safetensors (tensors only), backbone file names must be plain names inside ``backbone/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from actionprior.checkpoint import MODEL_PREFIX, StoredCheckpoint, read_policy_folder
from actionprior.checkpoint_file import MAX_POLICY_JSON_BYTES as MAX_JSON_BYTES  # noqa: F401
from actionprior.checkpoint_file import POLICY_BACKBONE_DIR as BACKBONE_DIR
from actionprior.checkpoint_file import POLICY_FORMAT as FORMAT
from actionprior.checkpoint_file import POLICY_FORMAT_VERSION as FORMAT_VERSION
from actionprior.checkpoint_file import POLICY_METADATA as METADATA
from actionprior.checkpoint_file import POLICY_WEIGHTS as WEIGHTS
from actionprior.data.schema import check_file_name


def export_policy(checkpoint: str | Path, out_dir: str | Path, keep_adapters: bool = False) -> Path:
    """Write the folder for a Stage 2 checkpoint; returns its path.

    A LoRA checkpoint (``vla.lora``) is rebuilt on its base and, by default, its adapters are merged into the
    weights: the folder is then an ordinary policy with plain layers. ``keep_adapters=True`` writes the base
    and the adapters apart (LoRA layers, ``vla.lora`` kept in the description). Either way the folder holds
    every weight (a policy loads offline).
    """
    from safetensors.torch import save_file

    from actionprior.models.lora import merge_lora

    stored = StoredCheckpoint.read(checkpoint).expect_stage(2, "export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(stored.payload)
    vla = dict(payload["vla"])
    spec = vla.pop("backbone_spec")
    config = dict(vla["config"])
    merged = 0
    if config.get("lora") is not None:
        model = stored.build_vla()
        if not keep_adapters:
            merged = merge_lora(model)
            config["lora"] = None
        state = model.state_dict()
    else:
        state = stored.model_state(MODEL_PREFIX)
    vla.pop("lora_base", None)  # the folder holds the base weights themselves
    vla["config"] = config
    payload["vla"] = vla | {"backbone_source": spec.get("source", "")}
    weights = {k: v.contiguous() for k, v in state.items()}
    # Tied weights share storage; safetensors refuses aliases, so each tensor is written as its own copy.
    seen: set[int] = set()
    for key, tensor in weights.items():
        if tensor.untyped_storage().data_ptr() in seen:
            weights[key] = tensor.clone()
        seen.add(weights[key].untyped_storage().data_ptr())
    save_file(weights, str(out / WEIGHTS), metadata={"format": FORMAT})
    backbone = out / BACKBONE_DIR
    backbone.mkdir(exist_ok=True)
    for name, text in spec["files"].items():
        (backbone / check_file_name(name, "checkpoint backbone spec: file")).write_text(text)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "source_checkpoint": Path(checkpoint).name}
    if merged:
        meta["lora_merged_layers"] = merged
    (out / METADATA).write_text(json.dumps(meta | {"payload": payload}, indent=1, sort_keys=True))
    (out / "README.md").write_text(
        f"# actionprior policy\n\nExported from `{Path(checkpoint).name}` (embodiments: "
        f"{', '.join(stored.registry.names)}; cameras: {', '.join(vla.get('camera_names') or [])}).\n\n"
        "```python\nfrom actionprior.inference.policy import Policy\n"
        "policy = Policy.from_pretrained('path/to/this/folder')\n```\n"
    )
    return out


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise FileNotFoundError(f"{name_or_path}: not an exported policy folder (nor a hub id 'owner/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path)))
    except Exception as exc:  # offline, unknown repository, no permission: one line, with the reason
        raise FileNotFoundError(
            f"{name_or_path}: not a local folder, and the hub download failed ({exc})"
        ) from None


def read_exported(name_or_path: str | Path) -> StoredCheckpoint:
    """The exported policy (a folder, or a hub id holding one) as a :class:`StoredCheckpoint`."""
    return read_policy_folder(_resolve(name_or_path))


def cli_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="actionprior export", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpt", required=True, help="a Stage 2 checkpoint (e.g. runs/stage2/checkpoints/last.ckpt)"
    )
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument(
        "--keep-adapters",
        action="store_true",
        help="a LoRA checkpoint: keep the adapters apart from the base weights (default: merge them in)",
    )
    args = p.parse_args(argv)
    out = export_policy(args.ckpt, args.out, keep_adapters=args.keep_adapters)
    print(f"exported {args.ckpt} -> {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
    return 0
