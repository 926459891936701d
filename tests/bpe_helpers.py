"""A byte-level BPE tokenizer with a chat template, built with ``tokenizers`` (no network), shaped like the
real models' ones: whitespace runs merged into single tokens ("\\n\\n", "\\n "), multi-byte characters in
byte tokens, special tokens for turns. And a tiny random Llama sized to it."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

IM_START, IM_END, UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "Janet has 16 eggs.\n\nShe eats 3.\n 13 are left.\n\n#### 13\n",
    "First, 7+5=2;\n\n then 2*3=6;\n  so #6\n\n",
    "Le café coûte 3 €.\n\nDeux cafés: 6 €.\n 日本 😀\n\n",
    "1+1=2\n 2+2=4\n\n3+3=6\n \n#### 6",
] * 50


@lru_cache(maxsize=1)
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token=None))
    # Words (with a leading space) and whitespace runs as pre-tokens: "\n\n" and "\n " become single tokens,
    # as in real vocabularies, and a token never spans two lines' text.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[^\s]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=[UNK, IM_START, IM_END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=IM_START, eos_token=IM_END, unk_token=UNK, pad_token=IM_END)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    import torch

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
