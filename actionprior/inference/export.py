"""A trained policy as a folder to share: safetensors weights and JSON, no pickle anywhere.

``actionprior export --ckpt runs/stage2/checkpoints/last.ckpt --out my-policy`` writes::

    my-policy/
      model.safetensors     the VLA's weights
      actionprior.json      model configs, embodiment specs, normalisation statistics (+ fingerprints),
                            camera order, image size, history length
      backbone/             the backbone's config, tokenizer and image-processor files (save_pretrained)
      README.md             what it is and how to load it

``Policy.from_pretrained("my-policy")`` loads it offline; a hub repository holding such a folder loads the
same way where a hub is reachable. Everything read back is untrusted: JSON is size-capped, weights are read
by safetensors (tensors only), backbone file names must be plain names inside ``backbone/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from actionprior.checkpoint import MODEL_PREFIX, CheckpointError, StoredCheckpoint
from actionprior.data.schema import check_file_name

FORMAT = "actionprior-policy"
FORMAT_VERSION = 1
WEIGHTS, METADATA, BACKBONE_DIR = "model.safetensors", "actionprior.json", "backbone"
MAX_JSON_BYTES = 64 * 2**20  # normalisation statistics of many robots fit easily; a hostile file does not


def export_policy(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the folder for a Stage 2 checkpoint; returns its path."""
    from safetensors.torch import save_file

    stored = StoredCheckpoint.read(checkpoint).expect_stage(2, "export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(stored.payload)
    vla = dict(payload["vla"])
    spec = vla.pop("backbone_spec")
    payload["vla"] = vla | {"backbone_source": spec.get("source", "")}
    weights = {k: v.contiguous() for k, v in stored.model_state(MODEL_PREFIX).items()}
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
    """The exported policy as a :class:`StoredCheckpoint` (the same object a checkpoint file gives)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = _resolve(name_or_path)
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise CheckpointError(f"{root}: no {METADATA}; not a folder written by `actionprior export`")
    if meta_path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{meta_path}: larger than {MAX_JSON_BYTES >> 20} MB")
    try:
        meta: Any = json.loads(meta_path.read_text())
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({str(exc)[:120]})") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or not isinstance(meta.get("payload"), dict)
    ):
        raise CheckpointError(f"{meta_path}: not an actionprior policy description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    backbone = root / BACKBONE_DIR
    if not backbone.is_dir():
        raise CheckpointError(f"{root}: no {BACKBONE_DIR}/ folder with the backbone's files")
    files = {p.name: p.read_text() for p in sorted(backbone.iterdir()) if p.is_file()}
    payload = dict(meta["payload"])
    vla = dict(payload.get("vla") or {})
    vla["backbone_spec"] = {"source": vla.pop("backbone_source", ""), "files": files}
    payload["vla"] = vla
    try:
        weights = load_file(str(root / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{root / WEIGHTS}: cannot read the weights ({exc})") from None
    state = {MODEL_PREFIX + k: v for k, v in weights.items()}
    return StoredCheckpoint.from_dict({"state_dict": state, "actionprior": payload}, str(root))


def cli_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="actionprior export", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpt", required=True, help="a Stage 2 checkpoint (e.g. runs/stage2/checkpoints/last.ckpt)"
    )
    p.add_argument("--out", required=True, help="the folder to write")
    args = p.parse_args(argv)
    out = export_policy(args.ckpt, args.out)
    print(f"exported {args.ckpt} -> {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
    return 0
