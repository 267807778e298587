"""A GRU encoder-decoder with a pluggable attention, for the toy translation task.

``attention`` picks the model:

* ``"none"``: the encoder's final state is the one fixed vector c that the decoder gets
  (its initial state and an input at every step, as in Cho et al., 2014, the RNNencdec of
  Bahdanau et al.); it never looks back at the source words: the fixed-vector bottleneck;
* ``"bahdanau"``: a bidirectional encoder; the decoder's previous state s_{i-1} queries
  the annotations with the additive score, and the context c_i enters the GRU
  (Bahdanau, Cho & Bengio, 2015);
* ``"dot"``, ``"general"``, ``"concat"``: Luong et al. (2015) global attention: the new
  decoder state h_t queries the encoder states, the attentional hidden state
  h̃_t = tanh(W_c [c_t; h_t]) predicts the word and is fed to the next step (input feeding);
* ``"local-p"``: Luong's local attention with a predicted centre p_t and a Gaussian
  window of half-width D, over the ``general`` score.

The scores themselves live in ``attnbook.attention.additive`` and ``.luong``; this module
only wires them into the recurrences.

Shapes: ``src`` (batch, src_len) token ids padded with ``pad_id``, ``src_lengths`` (batch,),
``tgt_in`` (batch, tgt_len) = <bos> y_1 .. y_{T-1}. ``forward`` returns logits
(batch, tgt_len, tgt_vocab) and the attention weights (batch, tgt_len, src_len), or None for
``"none"``. Padded source positions get a weight of exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..attention._checks import check_positive_int, check_rank
from ..attention.additive import AdditiveAttention, additive_scores_projected, project_keys, source_attention
from ..attention.luong import LuongAttention, dot_scores, local_p_attention, luong_output

Tensor = torch.Tensor

ATTENTIONS = ("none", "bahdanau", "dot", "general", "concat", "local-p")


class Encoder(nn.Module):
    """Embedding + GRU over the true lengths (packed, so padding never enters a state).

    Returns states (batch, src_len, hidden_dim * directions) with zeros at padding, and the
    final state of each direction, (directions, batch, hidden_dim).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, *,
                 bidirectional: bool, pad_id: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = nn.GRU(embed_dim, hidden_dim, batch_first=True, bidirectional=bidirectional)

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        packed = pack_padded_sequence(self.embed(src), src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        states, final = self.rnn(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=src.shape[1])
        return states, final


class Seq2Seq(nn.Module):
    """GRU encoder-decoder; ``attention`` is one of ``ATTENTIONS`` (see the module docstring).

    ``half_window`` is local-p's D; ``bidirectional`` defaults to True for ``"bahdanau"``
    only (as in the papers); its states are then 2 * hidden_dim wide, so ``"dot"`` (which
    needs encoder and decoder states of one width) refuses a bidirectional encoder.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, *, attention: str = "bahdanau",
                 embed_dim: int = 64, hidden_dim: int = 128, attn_dim: int | None = None,
                 half_window: int = 4, bidirectional: bool | None = None, pad_id: int = 0):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size),
                            ("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
            check_positive_int(name, value)
        bidirectional = (attention == "bahdanau") if bidirectional is None else bidirectional
        if attention == "dot" and bidirectional:
            raise ValueError("attention='dot' needs encoder states as wide as the decoder state; "
                             "use bidirectional=False or attention='general'")
        self.attention, self.pad_id, self.hidden_dim = attention, pad_id, hidden_dim
        attn_dim = hidden_dim if attn_dim is None else attn_dim
        # Each direction has hidden_dim units, so the annotations h_j = [→h_j; ←h_j] of a
        # bidirectional encoder are 2 * hidden_dim wide (as in Bahdanau et al.).
        key_dim = hidden_dim * (2 if bidirectional else 1)
        self.encoder = Encoder(src_vocab_size, embed_dim, hidden_dim,
                               bidirectional=bidirectional, pad_id=pad_id)
        self.embed = nn.Embedding(tgt_vocab_size, embed_dim, padding_idx=pad_id)
        # s_0 = tanh(W_s h_final): the encoder's final state(s), mapped to the decoder's width
        # (Bahdanau et al. use the backward state at the first word only)
        self.from_backward = attention == "bahdanau" and bidirectional
        self.init = nn.Linear(hidden_dim if self.from_backward else key_dim, hidden_dim)
        if attention in ("none", "bahdanau"):
            if attention == "bahdanau":
                self.attn = AdditiveAttention(hidden_dim, key_dim, attn_dim)
            self.cell = nn.GRUCell(embed_dim + key_dim, hidden_dim)         # input [E y; c]
            self.deep_out = nn.Linear(hidden_dim + key_dim + embed_dim, hidden_dim)
            self.out = nn.Linear(hidden_dim, tgt_vocab_size)
        else:
            score = "general" if attention == "local-p" else attention
            self.attn = LuongAttention(hidden_dim, key_dim, score=score, attn_dim=attn_dim,
                                       half_window=half_window if attention == "local-p" else None,
                                       output_layer=True)                 # returns h̃_t
            self.cell = nn.GRUCell(embed_dim + hidden_dim, hidden_dim)      # input [E y; h̃_{t-1}]
            self.out = nn.Linear(hidden_dim, tgt_vocab_size)

    # -- encoder side ------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> dict:
        """Everything the decoder needs about the source, computed once per sentence."""
        check_rank("src", src, 2, "(batch, src_len)")
        check_rank("src_lengths", src_lengths, 1, "(batch,)")
        if src_lengths.shape[0] != src.shape[0]:
            raise ValueError(f"src_lengths {tuple(src_lengths.shape)} must be (batch={src.shape[0]},)")
        if int(src_lengths.min()) < 1 or int(src_lengths.max()) > src.shape[1]:
            raise ValueError(f"src_lengths must lie in [1, src_len={src.shape[1]}], "
                             f"got {src_lengths.tolist()}")
        states, final = self.encoder(src, src_lengths)
        positions = torch.arange(src.shape[1], device=src.device)
        mask = positions[None, :] < src_lengths.to(src.device)[:, None]     # True = real token
        if self.from_backward:
            summary = final[1]                    # Bahdanau: s_0 = tanh(W_s ←h_1), backward state (W_s = self.init)
        else:
            summary = torch.cat(list(final), dim=-1)  # (batch, key_dim)
        memory = {"states": states, "mask": mask,
                  "hidden": torch.tanh(self.init(summary))}                # (batch, hidden_dim)
        if self.attention == "none":
            memory["context"] = summary           # the one fixed vector c, the same at every step
        if self.attention == "bahdanau":
            memory["projected"] = self.attn.project_keys(states)           # U_a h_j, once
        elif self.attention in ("general", "local-p"):
            memory["projected"] = F.linear(states, self.attn.W_a.weight)    # h̄_s W_aᵀ, once
        elif self.attention == "concat":                                   # the h̄_s half of W_a [h_t; h̄_s]
            memory["projected"] = project_keys(states, self.attn.W_a.weight[:, self.hidden_dim:])
        if self.attention not in ("none", "bahdanau"):
            memory["feed"] = states.new_zeros(src.shape[0], self.hidden_dim)  # h̃_0 = 0
        return memory

    # --8<-- [start:step]
    def step(self, memory: dict, prev_tokens: Tensor) -> tuple[Tensor, Tensor | None, dict]:
        """One decoder step: previous tokens (batch,) -> (features, weights, new memory).

        ``features`` (batch, hidden_dim) go through ``self.out`` to give the logits;
        ``weights`` (batch, src_len) is the attention of this step (None for "none").
        """
        embedded = self.embed(prev_tokens)                                  # (batch, embed_dim)
        hidden, weights = memory["hidden"], None
        if self.attention in ("none", "bahdanau"):
            if self.attention == "none":                 # c is the fixed summary of the source
                context = memory["context"]
            else:                                        # c_i: the previous state s_{i-1} asks
                context, weights = self.attn(hidden, memory["states"], memory["mask"],
                                             projected_keys=memory["projected"], return_weights=True)
            hidden = self.cell(torch.cat([embedded, context], -1), hidden)   # s_i
            features = torch.tanh(self.deep_out(torch.cat([hidden, context, embedded], -1)))
        else:                                            # Luong: the new state h_t asks
            hidden = self.cell(torch.cat([embedded, memory["feed"]], -1), hidden)   # input feeding
            features, weights = self.luong_attention(hidden, memory)              # h̃_t
        return features, weights, {**memory, "hidden": hidden, "feed": features}
    # --8<-- [end:step]

    def luong_attention(self, hidden: Tensor, memory: dict) -> tuple[Tensor, Tensor]:
        """``LuongAttention.forward`` for one step, with the source side precomputed in ``encode``.

        hidden: h_t (batch, hidden_dim) -> (h̃_t (batch, hidden_dim), weights (batch, src_len)).
        Equal to ``self.attn(hidden, states, mask)`` (tested), without re-projecting every
        source state at every step.
        """
        query = hidden[:, None, :]                                          # (batch, 1, hidden_dim)
        states, mask, attn = memory["states"], memory["mask"], self.attn
        if self.attention == "dot":
            scores = dot_scores(query, states)
        elif self.attention == "concat":
            scores = additive_scores_projected(query, memory["projected"],
                                               attn.W_a.weight[:, :self.hidden_dim], attn.v_a)
        else:                                                               # general, local-p
            scores = dot_scores(query, memory["projected"])
        if self.attention == "local-p":
            context, weights = local_p_attention(query, states, scores, attn.W_p.weight, attn.v_p,
                                                 half_window=attn.half_window, source_mask=mask,
                                                 return_weights=True)
        else:
            context, weights = source_attention(scores, states, mask, return_weights=True)
        return luong_output(context, query, attn.W_c.weight)[:, 0], weights[:, 0]

    def forward(self, src: Tensor, src_lengths: Tensor,
                tgt_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: logits (batch, tgt_len, tgt_vocab), weights (batch, tgt_len, src_len)."""
        check_rank("tgt_in", tgt_in, 2, "(batch, tgt_len)")
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src {tuple(src.shape)} and tgt_in {tuple(tgt_in.shape)} "
                             "differ in batch size")
        memory = self.encode(src, src_lengths)
        features, weights = [], []
        for t in range(tgt_in.shape[1]):
            step_features, step_weights, memory = self.step(memory, tgt_in[:, t])
            features.append(step_features)
            weights.append(step_weights)
        logits = self.out(torch.stack(features, dim=1))   # one matmul for every step
        return logits, (None if self.attention == "none" else torch.stack(weights, dim=1))

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, src_lengths: Tensor, *, max_len: int, bos_id: int,
                      eos_id: int) -> tuple[Tensor, Tensor | None]:
        """Feed back the arg-max word until every sentence has produced <eos> or ``max_len`` words.

        Returns tokens (batch, steps <= max_len), <eos> included, ``pad_id`` after it, and the
        weights (batch, steps, src_len) (None for "none").
        """
        check_positive_int("max_len", max_len)
        memory = self.encode(src, src_lengths)
        prev = torch.full((src.shape[0],), bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros_like(prev, dtype=torch.bool)
        tokens, weights = [], []
        for _ in range(max_len):
            features, step_weights, memory = self.step(memory, prev)
            prev = self.out(features).argmax(dim=-1)
            tokens.append(prev.masked_fill(finished, self.pad_id))
            weights.append(step_weights)
            finished = finished | (prev == eos_id)
            if bool(finished.all()):
                break
        stacked = None if self.attention == "none" else torch.stack(weights, dim=1)
        return torch.stack(tokens, dim=1), stacked
