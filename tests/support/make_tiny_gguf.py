#!/usr/bin/env python3
"""Writes a tiny random-weight llama-architecture GGUF for the real
llama-server of the tests (tests/it/common/llm.rs), so no model is
downloaded: the tokenizer is taken whole from a vocab-only GGUF that
llama.cpp ships (models/ggml-vocab-llama-spm.gguf, 32,000 tokens, copied to
target/llama-server/ by scripts/build_llama_server), the weights are
random, seeded, so every run writes the same file.

2 layers, n_embd 64, 4 heads, ffn 128, context 256, plus a ChatML chat
template so /v1/chat/completions works too. It generates nonsense, fast:
on the 2-core test machine the file is 9.2 MB, written in about 3.5 s,
and 32 tokens take 0.02-0.09 s (measured 2026-12-07).

Usage: make_tiny_gguf.py VOCAB_GGUF OUT_GGUF  (PyPI gguf and numpy)"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, LlamaFileType

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_CTX = 2, 64, 4, 4, 128, 256
CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)


def main(vocab_path: str, out_path: str) -> None:
    fields = GGUFReader(vocab_path).fields

    def field(name):
        return fields[name].contents()

    tokens = field("tokenizer.ggml.tokens")
    n_vocab = len(tokens)

    w = GGUFWriter(out_path, "llama")
    w.add_name("inferwatch-tiny-random-llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_vocab_size(n_vocab)
    w.add_file_type(LlamaFileType.MOSTLY_F16)

    w.add_tokenizer_model(field("tokenizer.ggml.model"))
    w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_scores(field("tokenizer.ggml.scores"))
    w.add_token_types(field("tokenizer.ggml.token_type"))
    w.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(field("tokenizer.ggml.eos_token_id"))
    w.add_unk_token_id(field("tokenizer.ggml.unknown_token_id"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    rng = np.random.default_rng(0)

    def rnd(*shape, dtype=np.float32):
        return (rng.standard_normal(shape) * 0.02).astype(dtype)

    # numpy shapes are (out, in). The two vocab-sized matrices are F16 to
    # keep the file small; the rest is F32.
    w.add_tensor("token_embd.weight", rnd(n_vocab, N_EMBD, dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", rnd(n_vocab, N_EMBD, dtype=np.float16))
    kv = N_EMBD // N_HEAD * N_HEAD_KV
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rnd(N_EMBD, N_EMBD))
        w.add_tensor(p + "attn_k.weight", rnd(kv, N_EMBD))
        w.add_tensor(p + "attn_v.weight", rnd(kv, N_EMBD))
        w.add_tensor(p + "attn_output.weight", rnd(N_EMBD, N_EMBD))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rnd(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", rnd(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", rnd(N_EMBD, N_FF))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
