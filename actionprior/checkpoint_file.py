"""A checkpoint file as bytes on disk: read safely, its format version checked and older formats upgraded.

The lowest layer of checkpoint handling (torch only: no models, no data), so that whatever needs a checkpoint's
payload -- the DataModule keeping a prior's statistics (``data.stats_from``), the CLI checking a resume --
reads it without importing the models. What a payload means, and the models it describes, are
:mod:`actionprior.checkpoint`'s.

A checkpoint file is untrusted: it is read with ``torch.load(weights_only=True)`` (tensors and plain
containers, never pickled code) after every zip member's CRC-32 is checked, and a refusal is one line.

Format versions of ``checkpoint["actionprior"]`` (the *payload*): 2 until the action-head seam; 3 renames
the VLA's action head ``prior`` -> ``head`` in the weights (``model.prior.*`` -> ``model.head.*``) and
records where a prior came from as ``prior_source`` at the top of the payload in both stages (Stage 1 wrote
``init_from``, Stage 2 ``vla.prior_source``). Version 2 files are upgraded when read (:func:`read_payload`).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_KEY = "actionprior"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
# Where the LightningModules keep their nn.Module: the state_dict prefix of the model's weights.
MODEL_PREFIX = "model."


# An exported policy folder (``actionprior export``): its files and metadata format.
POLICY_FORMAT = "actionprior-policy"
POLICY_FORMAT_VERSION = 1
POLICY_WEIGHTS, POLICY_METADATA, POLICY_BACKBONE_DIR = "model.safetensors", "actionprior.json", "backbone"
MAX_POLICY_JSON_BYTES = (
    64 * 2**20
)  # normalisation statistics of many robots fit easily; a hostile file does not


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used: not a checkpoint, another stage, or incompatible."""


def read_policy_metadata(root: str | Path) -> dict[str, Any]:
    """The ``actionprior.json`` of an exported policy folder (size-capped, checked), or one line why not."""
    import json

    meta_path = Path(root) / POLICY_METADATA
    if not meta_path.is_file():
        raise CheckpointError(f"{root}: no {POLICY_METADATA}; not a folder written by `actionprior export`")
    if meta_path.stat().st_size > MAX_POLICY_JSON_BYTES:
        raise CheckpointError(f"{meta_path}: larger than {MAX_POLICY_JSON_BYTES >> 20} MB")
    try:
        meta: Any = json.loads(meta_path.read_text())
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({str(exc)[:120]})") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != POLICY_FORMAT
        or not isinstance(meta.get("payload"), dict)
    ):
        raise CheckpointError(f"{meta_path}: not an actionprior policy description")
    if meta.get("format_version") != POLICY_FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format version {meta.get('format_version')}, this code reads {POLICY_FORMAT_VERSION}"
        )
    return meta


def read_any_payload(path: str | Path) -> dict[str, Any]:
    """The payload of a checkpoint file or of an exported policy folder (no weights are read from a folder)."""
    if Path(path).is_dir():
        return dict(read_policy_metadata(path)["payload"])
    return read_payload(load_checkpoint_file(path, mmap=True), str(path))


def read_payload(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The checkpoint's payload (a copy), at :data:`FORMAT_VERSION`. A checkpoint of an older readable version
    is upgraded first, in place (:func:`upgrade_checkpoint`), so that its weights load into today's modules."""
    payload = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{source} has no '{CHECKPOINT_KEY}' entry: it is not an actionprior checkpoint "
            f"(top-level keys: {sorted(map(str, checkpoint))[:10]})"
        )
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{source}: checkpoint format version {version}, this code reads {list(READABLE_VERSIONS)}"
        )
    if version != FORMAT_VERSION:
        upgrade_checkpoint(checkpoint)
    return dict(checkpoint[CHECKPOINT_KEY])


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Rewrite a format-2 checkpoint dict as format 3, in place (see the module docstring)."""
    payload = dict(checkpoint[CHECKPOINT_KEY])
    vla = payload.get("vla")
    if isinstance(vla, Mapping):  # Stage 2: the head's weights and where its prior came from
        vla = dict(vla)
        payload["prior_source"] = vla.pop("prior_source", None)
        payload["vla"] = vla
        state = checkpoint.get("state_dict")
        if isinstance(state, Mapping):
            old, new = MODEL_PREFIX + "prior.", MODEL_PREFIX + "head."
            checkpoint["state_dict"] = {
                (new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()
            }
    else:
        payload["prior_source"] = payload.pop("init_from", None)
    payload["format_version"] = FORMAT_VERSION
    checkpoint[CHECKPOINT_KEY] = payload


def load_checkpoint_file(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint dict of a file, or one line saying why it is not one (no unpickling of code).

    A file that is read (not mapped) has every member's CRC-32 checked first: torch's reader does not, so a
    flipped bit in a weight would otherwise load silently and change every action.
    ``mmap=True`` maps the tensors instead of reading them: for checks that need only the metadata of a
    checkpoint that Lightning itself reads afterwards (a resumed run), so a 2B-parameter file is not read twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable checkpoint (the file is empty)")
    if zipfile.is_zipfile(path):
        if not mmap:
            verify_zip_checksums(path)
    else:
        _refuse_non_zip(path, mmap)
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {_weights_only_refusal(str(exc))}") from None
    except EOFError:
        raise CheckpointError(f"{path}: not a readable checkpoint (the file ends early: truncated)") from None
    except (RuntimeError, OSError, zipfile.BadZipFile, ValueError) as exc:
        # The first sentence: torch's zip errors go on for lines about how the file might have got corrupted.
        reason = (
            str(exc).strip().splitlines()[0].split(". ")[0][:200] if str(exc).strip() else type(exc).__name__
        )
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


MAX_ZIP_MEMBERS = 1_000_000  # a torch file holds one member per tensor storage, plus a few
_CRC_CHUNK = 16 << 20


def _refuse_non_zip(path: Path, mmap: bool) -> None:
    """Say what a file that is not a zip archive (what ``torch.save`` writes) is, rather than torch's advice
    about mmap and re-saving: random bytes are not a checkpoint to re-save. A bare pickle (a legacy torch
    file) goes on to the weights-only reader unless it was to be mapped."""
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:  # pickles (protocol 2+) start with PROTO n
        raise CheckpointError(
            f"{path}: not a readable checkpoint (neither the zip archive torch.save writes nor a pickle: "
            "random bytes or another kind of file)"
        )
    if mmap:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (a bare pickle, not the zip archive torch.save writes: a "
            "legacy torch file or not a checkpoint at all)"
        )


def verify_zip_checksums(path: Path) -> None:
    """Read every member of a torch zip file once, checking its CRC-32 (one line naming the damaged member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise CheckpointError(f"{path}: not a checkpoint ({len(members)} zip members)")
            for info in members:
                with archive.open(info) as stream:  # raises BadZipFile at the end of a member with a bad CRC
                    while stream.read(_CRC_CHUNK):
                        pass
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"{path}: damaged checkpoint ({str(exc)[:200]}); the file was changed after it was written"
        ) from None
    except (OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _weights_only_refusal(message: str) -> str:
    """What torch's weights-only unpickler refused, in one line. Torch's own message is many lines and advises
    ``weights_only=False``, which is exactly what must not be done with a file of unknown origin."""
    blocked = re.search(r"GLOBAL ([\w.]+)", message)
    if blocked:
        return (
            f"refused: it would unpickle {blocked.group(1)}, not a tensor or plain container "
            "(loading it could run code; only weights-only checkpoints are read)"
        )
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    detail = found.group(1).strip() if found else "not a pickle torch reads"
    return f"not a readable checkpoint (not a weights-only torch file: {detail[:200]})"
