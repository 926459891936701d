"""A character-level tokenizer as a Hugging Face fast tokenizer.

One token per character of the task's alphabet, plus ``<pad>``, ``<eos>`` and ``<unk>``. Built with the
``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast`` so it saves with ``save_pretrained``
and loads with ``AutoTokenizer.from_pretrained`` like any other tokenizer. Character level keeps step
spans exact (one character, one token) and lets SFT from scratch work on a user's task with its own
alphabet.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A tokenizer with ids 0, 1, 2 for pad, eos, unk and one id per distinct character after them."""
    chars = sorted(set(alphabet))
    if not chars:
        raise ValueError("cannot build a tokenizer from an empty alphabet")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in chars:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character (newlines included) is its own pre-token; Fuse joins tokens without spaces.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    tokenizer.model_max_length = 1_000_000
    return tokenizer
