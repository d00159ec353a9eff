"""The tiny backbones' tokenizer: a byte-level BPE trained offline on robot-instruction text plus a family's
special tokens (:mod:`actionprior.models.backbones.tiny`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Vocabulary source for the tiny tokenizer. Byte-level BPE can encode any string, so instructions
# outside this corpus still tokenize (into more pieces); the corpus only makes common words short.
INSTRUCTION_CORPUS = (
    "pick up the red cube and place it in the bin",
    "pick the object and put it on the plate",
    "open the drawer",
    "close the drawer",
    "push the puck to the goal",
    "lift the block",
    "stack the red block on the green block",
    "insert the peg into the hole",
    "assemble the nut onto the peg",
    "press the button",
    "turn the faucet",
    "move the gripper to the target",
    "grasp the can and lift it up",
    "slide the plate into the rack",
    "wipe the table",
    "reach the goal position",
)


def build_tiny_tokenizer(
    special_tokens: Iterable[str],
    pad_token: str,
    eos_token: str,
    corpus: Iterable[str] = INSTRUCTION_CORPUS,
    vocab_size: int = 512,
    bos_token: str | None = None,
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline; special tokens get the first ids, in order."""
    specials = list(special_tokens)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    named = dict(named_tokens or {})
    kwargs: dict[str, Any] = {}
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    if named:
        kwargs["extra_special_tokens"] = named
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad_token,
        eos_token=eos_token,
        additional_special_tokens=[
            t for t in specials if t not in (pad_token, eos_token, bos_token) and t not in named.values()
        ],
        padding_side="left",
        **kwargs,
    )
