# ProLong-shaped tiny preset as an F32 GGUF (names/shapes only matter to llama-quantize's type choice):
# 8 layers, hidden 256, 4 heads / 1 KV head (GQA 4 like ProLong), FFN 768, vocab 128256, untied output.
import numpy as np
from gguf import GGUFWriter
L, H, NH, NKV, FF, V = 8, 256, 4, 1, 768, 128256
hd = H // NH
w = GGUFWriter('prolong-tiny.F32.gguf', arch='llama')
w.add_block_count(L); w.add_context_length(65536); w.add_embedding_length(H); w.add_feed_forward_length(FF)
w.add_head_count(NH); w.add_head_count_kv(NKV); w.add_rope_freq_base(8e6); w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(0); w.add_vocab_size(V); w.add_rope_dimension_count(hd)
rng = np.random.default_rng(0)
def t(name, *shape):  # shape outermost first
    w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
t('token_embd.weight', V, H)
for l in range(L):
    t(f'blk.{l}.attn_norm.weight', H); t(f'blk.{l}.attn_q.weight', NH*hd, H); t(f'blk.{l}.attn_k.weight', NKV*hd, H)
    t(f'blk.{l}.attn_v.weight', NKV*hd, H); t(f'blk.{l}.attn_output.weight', H, NH*hd); t(f'blk.{l}.ffn_norm.weight', H)
    t(f'blk.{l}.ffn_gate.weight', FF, H); t(f'blk.{l}.ffn_up.weight', FF, H); t(f'blk.{l}.ffn_down.weight', H, FF)
t('output_norm.weight', H); t('output.weight', V, H)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
