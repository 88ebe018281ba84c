"""A lexical-matching starting point for the tiny base reranker, written into Qwen3 weights.

Training a tiny model from random weights on a shared 2-core CPU for ~20 minutes does not learn relevance
(`train_tiny_base.py --init random` stays at chance; figures in models/tiny-reranker/README.md). So the base
starts from weights that implement a soft, IDF-weighted term-match count in three attention layers, and is then
trained on general relevance groups. The circuit, in the prompt `... <Query>: q \n<Document>: d <suffix>`:

  layer 0, head 0 ("region"): every token attends to the `Query` / `<Document` marker tokens (a sink at
      `<|im_start|>` when neither came yet) and writes +1 between the markers (query region), 0 elsewhere;
  layer 1, head 0 ("match"): a token attends to earlier tokens with the same embedding *in the query region*
      (content score + region bonus beat the sink; a copy outside the query region, including the token
      itself, does not) and writes the IDF of the matched token (0 when it only finds the sink);
  layer 2, head 0 ("pool"): the last token averages the match feature over the prompt; the yes−no head
      reads it.

Content matching uses only the RoPE pairs whose frequency is below 1e-3 rad/token (head_dim 128), so it does
not depend on distance. IDF comes from document frequencies of the pretraining corpora (never SciFact).
All other weights (second heads, MLPs) start small or at zero, so training can add to the circuit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

HEAD_DIM = 128
SLOW = list(range(32, 64)) + list(range(96, 128))  # head dims of RoPE pairs 32..63 (slow rotation)
N_CONTENT = 56
D_CONST, D_SINK, D_QMARK, D_DMARK, D_REGION, D_MATCH, D_IDF, D_OUT = range(56, 64)
# head-space directions (all slow) besides the content dims SLOW[:56]
H_SINK, H_REGION, H_A, H_B = SLOW[56], SLOW[57], SLOW[58], SLOW[59]


def base_config(layers: int = 3):
    """`tuner.tiny.tiny_config` with two 128-wide heads per layer (hidden stays 64)."""
    from tuner.tiny import tiny_config

    cfg = tiny_config(layers=layers, hidden=64, heads=2, kv_heads=2)
    cfg.head_dim = HEAD_DIM
    return cfg


def token_idf(token_lists: Iterable[list[int]], vocab: int) -> torch.Tensor:
    """BM25-style IDF per token id from tokenized documents, scaled to [0, 1]; unseen tokens get 1."""
    df = torch.zeros(vocab)
    n = 0
    for ids in token_lists:
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
        n += 1
    idf = torch.log((n - df + 0.5) / (df + 0.5) + 1.0)
    return (idf / idf.max()).clamp(0, 1)


@torch.no_grad()
def lexical_init(
    model,
    idf: torch.Tensor,
    sink_id: int,
    query_marker_id: int,
    doc_marker_id: int,
    yes_id: int,
    no_id: int,
    seed: int = 0,
    match_gain: float = 1.0,
    pool_gain: float = 20.0,
    head_gain: float = 2.0,
) -> None:
    """Overwrite `model` (from `base_config`) with the lexical-matching circuit described in the module doc."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    assert cfg.hidden_size == 64 and cfg.head_dim == HEAD_DIM and cfg.num_hidden_layers >= 3
    vocab = cfg.vocab_size
    idf_scale = 3.0

    # ---- embeddings (tied with the head): rms 1 per row
    emb = torch.zeros(vocab, 64)
    content = torch.randn(vocab, N_CONTENT, generator=gen)
    content = content / content.norm(dim=1, keepdim=True)
    idf_col = idf * idf_scale
    emb[:, :N_CONTENT] = content * (48.0 - idf_col**2).sqrt()[:, None]
    emb[:, D_CONST] = 4.0
    emb[:, D_IDF] = idf_col
    emb[sink_id] = 0.0
    emb[sink_id, D_SINK] = 8.0
    for marker, dim in ((query_marker_id, D_QMARK), (doc_marker_id, D_DMARK)):
        emb[marker] = 0.0
        emb[marker, D_CONST] = 4.0
        emb[marker, dim] = math.sqrt(48.0)
    emb[yes_id, D_OUT] += head_gain
    emb[no_id, D_OUT] -= head_gain
    model.model.embed_tokens.weight.copy_(emb)

    def small(t: torch.Tensor, std: float = 0.02) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            small(proj.weight)
            proj.weight[:HEAD_DIM] = 0.0  # head 0 is written below; head 1 starts small and random
        attn.o_proj.weight.zero_()  # nothing reaches the residual stream unless written below
        small(mlp.gate_proj.weight)
        small(mlp.up_proj.weight)
        mlp.down_proj.weight.zero_()
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
    model.model.norm.weight.fill_(1.0)

    # ---- layer 0: region. query direction (e_a + 3 e_b), sink key e_a, marker keys (e_a + e_b)
    a0 = model.model.layers[0].self_attn
    a0.q_proj.weight[H_A, D_CONST] = 1.0
    a0.q_proj.weight[H_B, D_CONST] = 3.0
    a0.k_proj.weight[H_A, D_SINK] = 1.0
    for dim in (D_QMARK, D_DMARK):
        a0.k_proj.weight[H_A, dim] = 1.0
        a0.k_proj.weight[H_B, dim] = 1.0
    a0.q_norm.weight.fill_(math.sqrt(3.0))
    a0.k_norm.weight.fill_(math.sqrt(3.0))
    marker_x = math.sqrt(48.0)  # the marker dim of a normalized marker embedding
    a0.v_proj.weight[0, D_QMARK] = 1.0 / marker_x
    a0.v_proj.weight[0, D_DMARK] = -1.0 / marker_x
    a0.o_proj.weight[D_REGION, 0] = 3.0

    # ---- layer 1: match. content on the slow dims; constant parts towards the sink and region keys
    a1 = model.model.layers[1].self_attn
    for k in range(N_CONTENT):
        a1.q_proj.weight[SLOW[k], k] = 1.0
        a1.k_proj.weight[SLOW[k], k] = 1.0
    a1.q_proj.weight[H_SINK, D_CONST] = 2.1
    a1.q_proj.weight[H_REGION, D_CONST] = 2.1
    a1.k_proj.weight[H_SINK, D_SINK] = 1.0
    a1.k_proj.weight[H_REGION, D_REGION] = 1.0
    a1.q_norm.weight.fill_(math.sqrt(4.3))
    a1.k_norm.weight.fill_(math.sqrt(4.3))
    a1.v_proj.weight[0, D_IDF] = match_gain / idf_scale
    a1.o_proj.weight[D_MATCH, 0] = 1.0

    # ---- layer 2: pool. uniform attention over every token but the sink; value = match feature
    a2 = model.model.layers[2].self_attn
    a2.q_proj.weight[H_A, D_CONST] = 1.0
    a2.k_proj.weight[H_A, D_CONST] = 1.0
    a2.q_norm.weight.fill_(1.0)
    a2.k_norm.weight.fill_(1.0)
    a2.v_proj.weight[0, D_MATCH] = 1.0
    a2.o_proj.weight[D_OUT, 0] = pool_gain
