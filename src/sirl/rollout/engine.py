"""Batched sampling from prompts and from arbitrary prefixes, with a KV cache.

:func:`generate` takes token-id contexts (a prompt, or a prompt plus part of a response: different for each
row) and samples continuations with temperature and top-p until EOS or ``max_new_tokens``. Each context is
encoded once and its cache copied to all ``repeats`` rows that continue it, so a group of G samples, or K
probes from one prefix, pays for one prefill.

Three backends run the same loop:

- ``FastBackend`` for Llama-shaped decoders (llama, qwen2, qwen3, mistral): a preallocated static KV cache
  and a hand-written attention step around the model's own projection, norm and MLP modules. Small models
  on a CPU are bound by per-call overhead, not arithmetic, and this removes most of it.
- ``LargeModelBackend``, the same for models of 50M parameters and more, which are bound by reading the
  weights and the cache: weights cast once to the rollout dtype (bf16 where the hardware has it,
  ``rollout.dtype``) and packed for oneDNN on a CPU, a cache that single-token attention reads in place,
  a prefill that computes the first part that contexts share once, and a sampler that draws one random
  number per row.
- ``HFBackend`` for every other causal LM: the model's own forward with a ``DynamicCache``.

All return log-probabilities of the sampled tokens under the temperature-scaled policy (the full
distribution, before top-p truncation: the distribution the trainer optimizes), and the naive equivalent
of each is a teacher-forced forward over the finished sequences (``sirl.model.token_logprobs``); the
tests hold them equal within 1e-5 in float32, and greedy output equal to ``model.generate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from sirl.model import compute_dtype, is_large_model

FAST_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    """0 means greedy decoding (log-probs are then reported at temperature 1)."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end a row as soon as its decoded text contains one; :func:`generate` then needs a
    ``decode``. The tokens that wrote it stay in the response (they were sampled and are trained on); the
    text a verifier scores ends before it (:func:`before_stop`)."""

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Generations:
    """Sampled continuations, one row per (context, repeat), context-major.

    ``tokens_BT`` holds the new tokens (EOS included when emitted) right-padded with ``pad_id``;
    ``logp_BT`` their sampling log-probs (0 on padding); ``mask_BT`` marks real new tokens;
    ``truncated_B`` is True where ``max_new_tokens`` ran out before EOS; ``context_index_B`` names the
    context each row continues.
    """

    tokens_BT: torch.Tensor  # [B, T] int64
    logp_BT: torch.Tensor  # [B, T] float32
    mask_BT: torch.Tensor  # [B, T] bool
    truncated_B: torch.Tensor  # [B] bool
    context_index_B: torch.Tensor  # [B] int64
    stopped_B: torch.Tensor | None = None  # [B] bool: the row ended on a stop string (None: no stop strings)

    @property
    def lengths_B(self) -> torch.Tensor:
        return self.mask_BT.sum(-1)

    def row_tokens(self, row: int) -> list[int]:
        return self.tokens_BT[row, : int(self.lengths_B[row])].tolist()

    def __len__(self) -> int:
        return self.tokens_BT.shape[0]


# --- backends ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerWeights:
    """One decoder layer's weights, regrouped for decoding (see FastBackend)."""

    in_eps: float
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    q_norm: tuple[torch.Tensor, float] | None
    k_norm: tuple[torch.Tensor, float] | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    post_eps: float
    gate_up_w: torch.Tensor
    gate_up_b: torch.Tensor | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None
    act: torch.nn.Module


class FastBackend:
    """Static-cache decoding for Llama-shaped models.

    The weights are the model's own, regrouped once per call of :func:`generate` (so they are always the
    current ones): q, k and v projections become one matrix and gate and up another, so a layer costs
    four matrix products per step, and each RMSNorm gain is folded into the projection after it. The rows of the q and k projections are permuted within each head so
    that rotary pairs (i, i + d/2) sit side by side; rotation is then one complex multiplication, and
    attention scores are unchanged because q and k are permuted alike. Single-token attention is one
    ``baddbmm`` (scale and padding mask fused) and one ``bmm``. On a CPU a tiny policy is bound by per-op
    overhead, and these cut the op count per step by more than half against the module-by-module forward.
    """

    def __init__(self, model: PreTrainedModel, dtype: torch.dtype | None = None):
        self.model = model
        self.dtype = dtype or rollout_dtype(model)
        inner = _unwrap(model)  # a peft model's transformers model, its LoRA layers in place
        decoder = inner.model
        config = inner.config
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = D = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.scale = D**-0.5
        self.embed = decoder.embed_tokens.weight
        # Under bf16 compute (autocast) the cache holds what the projections write: bf16 keys and values.
        self.cache_dtype = self.dtype
        pairs = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], dim=1).flatten()  # 0, d/2, 1, ...

        def interleave(weight: torch.Tensor | None, n_heads: int) -> torch.Tensor | None:
            """Permute output rows of a q/k projection (or its bias) head by head into rotary pair order."""
            if weight is None:
                return None
            return weight.view(n_heads, D, *weight.shape[1:])[:, pairs].reshape(weight.shape)

        def fold(norm: torch.nn.Module, *weights: torch.Tensor) -> torch.Tensor:
            """``W @ (g * x) == (W * g) @ x``: the RMSNorm gain moves into the next projection (the rows of
            ``weights`` stacked, written in place rather than concatenated)."""
            gain = _norm_params(norm)[0][None, :]
            out = torch.empty(sum(w.shape[0] for w in weights), gain.shape[1], dtype=self.embed.dtype, device=gain.device)
            start = 0
            for w in weights:
                torch.mul(w, gain, out=out[start : start + w.shape[0]])
                start += w.shape[0]
            return out

        self.layers: list[_LayerWeights] = []
        with torch.no_grad():
            for layer in decoder.layers:
                attn, mlp = layer.self_attn, layer.mlp
                (q_w, q_b), (k_w, k_b), (v_w, v_b) = (_linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj))
                (o_w, o_b), (g_w, g_b), (u_w, u_b), (d_w, d_b) = (
                    _linear(attn.o_proj), _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj)
                )
                self.layers.append(self._prepare(
                    _LayerWeights(
                        in_eps=_norm_params(layer.input_layernorm)[1],
                        qkv_w=fold(layer.input_layernorm, interleave(q_w, self.n_heads), interleave(k_w, self.n_kv_heads), v_w),
                        qkv_b=None if q_b is None else torch.cat([interleave(q_b, self.n_heads), interleave(k_b, self.n_kv_heads), v_b]),
                        # qwen3 normalizes q and k per head before rotation; its gains follow the permutation.
                        q_norm=_permuted_norm(getattr(attn, "q_norm", None), pairs),
                        k_norm=_permuted_norm(getattr(attn, "k_norm", None), pairs),
                        o_w=o_w,
                        o_b=o_b,
                        post_eps=_norm_params(layer.post_attention_layernorm)[1],
                        gate_up_w=fold(layer.post_attention_layernorm, g_w, u_w),
                        gate_up_b=None if g_b is None else torch.cat([g_b, u_b]),
                        down_w=d_w,
                        down_b=d_b,
                        act=mlp.act_fn,
                    )
                ))
            self.final_eps = _norm_params(decoder.norm)[1]
            self.lm_head = self._prepare_weight(fold(decoder.norm, _linear(inner.lm_head)[0]))
            positions = torch.arange(config.max_position_embeddings, device=self.embed.device)[None]
            cos, sin = decoder.rotary_emb(self.embed[:1][None].float(), positions)
            # cos/sin repeat over the two halves of a head; one half, as a complex number, is the rotation.
            self.rotation = torch.complex(cos[0, :, : D // 2], sin[0, :, : D // 2])  # [max_positions, D/2]

    def sample(self, logits_BV, params, generator):
        return sample_next(logits_BV, params, generator)

    def _prepare(self, layer: _LayerWeights) -> _LayerWeights:
        """A layer's weights as :meth:`_forward` applies them (here: as they are)."""
        return layer

    def _prepare_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def autocast(self):
        """The context decoding runs in: autocast to the rollout dtype when it is not the weights'."""
        return _autocast_to(self.model, self.dtype)

    def prefill(self, ids_BP: torch.Tensor, mask_BP: torch.Tensor, capacity: int) -> tuple[torch.Tensor, dict]:
        B, P = ids_BP.shape
        if capacity > len(self.rotation):
            raise ValueError(
                f"prompt + max_new_tokens = {capacity} positions exceed the model's "
                f"max_position_embeddings={len(self.rotation)}; lower max_new_tokens or shorten the prompts"
            )
        device = ids_BP.device
        bias_BS = torch.zeros(B, capacity, dtype=self.cache_dtype, device=device)
        bias_BS[:, :P].masked_fill_(~mask_BP, float("-inf"))
        k_shape, v_shape = self._cache_shapes(B, capacity)
        state = {
            "k": [torch.zeros(k_shape, dtype=self.cache_dtype, device=device) for _ in self.layers],
            "v": [torch.zeros(v_shape, dtype=self.cache_dtype, device=device) for _ in self.layers],
            "bias_BS": bias_BS,  # 0 where a cache slot holds a real token, -inf on left padding
            "next_pos_B": mask_BP.long().sum(-1),
            "length": P,
        }
        pos_BP = (mask_BP.long().cumsum(-1) - 1).clamp(min=0)
        # Causal over slots; a padding query may see itself so its (unused) output stays finite.
        causal_PP = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        attend_B1PP = (causal_PP & mask_BP[:, None, :])[:, None] | torch.eye(P, dtype=torch.bool, device=device)
        hidden = self._forward(ids_BP, pos_BP, state, slot=0, attend=attend_B1PP)
        return self._logits(hidden[:, -1]), state

    def _cache_shapes(self, B: int, capacity: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = (B, self.n_kv_heads, capacity, self.head_dim)
        return shape, shape

    def decode(self, tokens_B: torch.Tensor, state: dict) -> torch.Tensor:
        slot = state["length"]
        B, G = len(tokens_B), self.n_heads // self.n_kv_heads
        # The padding mask of every head and query group, built once per step for all layers.
        bias = state["bias_BS"][:, None, None, : slot + 1].expand(B, self.n_kv_heads, G, slot + 1)
        bias = bias.reshape(B * self.n_kv_heads, G, slot + 1)
        hidden = self._forward(tokens_B[:, None], state["next_pos_B"][:, None], state, slot=slot, attend=bias)
        state["length"] = slot + 1
        state["next_pos_B"] = state["next_pos_B"] + 1
        return self._logits(hidden[:, -1])

    def _forward(self, ids_BT, pos_BT, state, slot: int, attend: torch.Tensor) -> torch.Tensor:
        """Prefill when ``attend`` is a boolean ``[B, 1, T, T]`` mask, else one token per row and
        ``attend`` the additive ``[B*Hkv, G, S]`` padding bias."""
        B, T = ids_BT.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        end = slot + T
        hidden = F.embedding(ids_BT, self.embed)
        rotation = self.rotation[pos_BT][:, :, None]  # [B, T, 1, D/2]
        for i, layer in enumerate(self.layers):
            qkv = F.linear(_normalize(hidden, layer.in_eps), layer.qkv_w, layer.qkv_b).view(B, T, H + 2 * Hkv, D)
            qk, v = qkv[:, :, : H + Hkv], qkv[:, :, H + Hkv :]
            if layer.q_norm is not None:
                qk = torch.cat([_rms_norm(qk[:, :, :H], layer.q_norm), _rms_norm(qk[:, :, H:], layer.k_norm)], dim=2)
            qk = _rotate(qk, rotation).transpose(1, 2)  # [B, H + Hkv, T, D]: queries and keys rotate together
            q = qk[:, :H]
            state["k"][i][:, :, slot:end] = qk[:, H:]
            state["v"][i][:, :, slot:end] = v.transpose(1, 2)
            keys, values = state["k"][i][:, :, :end], state["v"][i][:, :, :end]
            if attend.dtype == torch.bool:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=self.scale, enable_gqa=Hkv != H)
                out = out.transpose(1, 2).reshape(B, T, H * D)
            else:
                q = q.reshape(B * Hkv, H // Hkv, D)
                scores = torch.baddbmm(attend, q, keys.reshape(B * Hkv, end, D).transpose(1, 2), alpha=self.scale)
                out = torch.bmm(torch.softmax(scores, dim=-1), values.reshape(B * Hkv, end, D)).view(B, 1, H * D)
            hidden = hidden + F.linear(out, layer.o_w, layer.o_b)
            gate, up = F.linear(_normalize(hidden, layer.post_eps), layer.gate_up_w, layer.gate_up_b).chunk(2, dim=-1)
            hidden = hidden + F.linear(layer.act(gate) * up, layer.down_w, layer.down_b)
        return hidden

    def _logits(self, hidden_BH: torch.Tensor) -> torch.Tensor:
        return F.linear(_normalize(hidden_BH, self.final_eps), self.lm_head).float()

    @staticmethod
    def repeat(state: dict, repeats: torch.Tensor) -> dict:
        return {
            "k": [t.repeat_interleave(repeats, dim=0) for t in state["k"]],
            "v": [t.repeat_interleave(repeats, dim=0) for t in state["v"]],
            "bias_BS": state["bias_BS"].repeat_interleave(repeats, dim=0),
            "next_pos_B": state["next_pos_B"].repeat_interleave(repeats, dim=0),
            "length": state["length"],
        }

    @staticmethod
    def select(state: dict, rows: torch.Tensor) -> dict:
        return {
            "k": [t.index_select(0, rows) for t in state["k"]],
            "v": [t.index_select(0, rows) for t in state["v"]],
            "bias_BS": state["bias_BS"].index_select(0, rows),
            "next_pos_B": state["next_pos_B"].index_select(0, rows),
            "length": state["length"],
        }


class LargeModelBackend(FastBackend):
    """:class:`FastBackend` for models of at least ``sirl.model.LARGE_MODEL_PARAMETERS``, whose decoding is bound
    by reading the weights and the cache from memory rather than by per-op overhead.

    - Weights are cast once to the rollout dtype (bf16 halves the bytes each step reads) and, on a CPU,
      prepacked for oneDNN's matrix product (``torch.ops.mkldnn._linear_pointwise``, what inductor's
      frozen CPU graphs call): at 8 rows, MKL's ``F.linear`` read SmolLM2's 576 x 49,152 head at about a
      fifth of the bandwidth oneDNN's packed product reaches. The residual stream stays float32, as
      under autocast.
    - Keys are cached transposed, ``[B, Hkv, D, slots]``, and values ``[B, Hkv, slots, D]``, and the cache
      grows :data:`CACHE_BLOCK` slots at a time, so a single-token attention step multiplies whole
      contiguous buffers of few distinct shapes (unwritten slots masked); it is ``baddbmm`` and ``bmm``
      rather than SDPA, whose CPU kernel took several times longer for one query in bf16. Prefill uses
      SDPA.
    - Contexts that share a first part (a prompt under several probe prefixes, the chat template's system
      turn) prefill it once (:func:`_shared_roots`); contexts repeated for a group already share their
      whole prefill (:func:`generate`).

    Its naive equivalent is :class:`FastBackend` (module by module under autocast); in float32 the two
    agree within 1e-5 (tests/test_rollout_bf16.py).
    """

    def __init__(self, model: PreTrainedModel, dtype: torch.dtype | None = None, packed: bool | None = None):
        dtype = dtype or rollout_dtype(model)
        device = next(model.parameters()).device
        self.packed = (device.type == "cpu" and _onednn_linear_available(dtype)) if packed is None else packed
        super().__init__(model, dtype)

    def _prepare(self, layer: _LayerWeights) -> _LayerWeights:
        cast = self._prepare_weight
        return dataclasses.replace(
            layer,
            qkv_w=cast(layer.qkv_w), qkv_b=_cast(layer.qkv_b, self.dtype), o_w=cast(layer.o_w), o_b=_cast(layer.o_b, self.dtype),
            gate_up_w=cast(layer.gate_up_w), gate_up_b=_cast(layer.gate_up_b, self.dtype),
            down_w=cast(layer.down_w), down_b=_cast(layer.down_b, self.dtype),
        )

    def _prepare_weight(self, weight: torch.Tensor) -> torch.Tensor:
        weight = weight.detach().to(self.dtype).contiguous()
        return torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_ROWS_HINT) if self.packed else weight

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return F.linear(x, weight, bias)

    def autocast(self):
        return contextlib.nullcontext()  # every cast is explicit

    def sample(self, logits_BV, params, generator):
        return sample_next_by_blocks(logits_BV, params, generator)

    def _empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)  # unwritten slots are read (masked): finite

    def repeat(self, state: dict, repeats: torch.Tensor) -> dict:
        """Rows ``repeats[i]`` times each, copying only the cache slots written so far."""
        if bool((repeats == 1).all()):
            return state
        U, length, uniform = len(repeats), state["length"], bool((repeats == repeats[0]).all())
        rows = torch.repeat_interleave(torch.arange(U, device=repeats.device), repeats)

        def widen(cache: torch.Tensor, slot_dim: int) -> torch.Tensor:
            out = self._empty((len(rows), *cache.shape[1:]), cache)
            if uniform:  # a broadcast copy: far faster than an index for bf16 on a CPU
                view = out.view(U, int(repeats[0]), *cache.shape[1:]).narrow(slot_dim + 1, 0, length)
                view.copy_(cache.narrow(slot_dim, 0, length)[:, None])
            else:
                out.narrow(slot_dim, 0, length).copy_(cache.narrow(slot_dim, 0, length)[rows])
            return out

        return {
            "k": [widen(t, 3) for t in state["k"]],
            "v": [widen(t, 2) for t in state["v"]],
            "bias_BS": state["bias_BS"][rows],
            "next_pos_B": state["next_pos_B"][rows],
            "length": length,
            "capacity": state["capacity"],
        }

    def select(self, state: dict, rows: torch.Tensor) -> dict:
        length = state["length"]

        def pick(cache: torch.Tensor, slot_dim: int) -> torch.Tensor:
            out = self._empty((len(rows), *cache.shape[1:]), cache)
            out.narrow(slot_dim, 0, length).copy_(cache.narrow(slot_dim, 0, length)[rows])
            return out

        return {
            "k": [pick(t, 3) for t in state["k"]],
            "v": [pick(t, 2) for t in state["v"]],
            "bias_BS": state["bias_BS"][rows],
            "next_pos_B": state["next_pos_B"][rows],
            "length": length,
            "capacity": state["capacity"],
        }

    def prefill(self, ids_BP: torch.Tensor, mask_BP: torch.Tensor, capacity: int) -> tuple[torch.Tensor, dict]:
        B, P = ids_BP.shape
        if capacity > len(self.rotation):
            raise ValueError(
                f"prompt + max_new_tokens = {capacity} positions exceed the model's "
                f"max_position_embeddings={len(self.rotation)}; lower max_new_tokens or shorten the prompts"
            )
        contexts = [row[keep].tolist() for row, keep in zip(ids_BP, mask_BP)]
        shared = _shared_roots(contexts)
        if shared is None:
            state = self._new_state(B, P, capacity - P, ids_BP.device)
            hidden = self._extend(state, ids_BP, mask_BP, torch.zeros(B, dtype=torch.long, device=ids_BP.device))
        else:
            hidden, state = self._prefill_shared(contexts, *shared, capacity - P, ids_BP.device)
        return self._logits(hidden[:, -1]), state

    def _new_state(self, B: int, used: int, extra: int, device: torch.device) -> dict:
        """An empty cache of ``used`` slots to fill now and room for ``extra`` more, -inf everywhere in the
        bias (attention runs over every slot, so unwritten and padding slots are masked)."""
        slots = min(used + extra, _round_up(used + 1, CACHE_BLOCK))
        return {
            "k": [torch.zeros(B, self.n_kv_heads, self.head_dim, slots, dtype=self.dtype, device=device) for _ in self.layers],
            "v": [torch.zeros(B, self.n_kv_heads, slots, self.head_dim, dtype=self.dtype, device=device) for _ in self.layers],
            "bias_BS": torch.full((B, slots), float("-inf"), dtype=self.dtype, device=device),
            "next_pos_B": torch.zeros(B, dtype=torch.long, device=device),
            "length": 0,
            "capacity": used + extra,
        }

    def _extend(self, state: dict, ids_BT: torch.Tensor, mask_BT: torch.Tensor, offset_B: torch.Tensor) -> torch.Tensor:
        """Write T more left-padded tokens per row into the cache after its ``length`` slots (each row's
        positions continue from ``offset_B``) and return their final hidden states."""
        B, T = ids_BT.shape
        slot, device = state["length"], ids_BT.device
        state["bias_BS"][:, slot : slot + T].masked_fill_(mask_BT, 0.0)
        pos_BT = offset_B[:, None] + (mask_BT.long().cumsum(-1) - 1).clamp(min=0)
        # Causal over the new slots, all earlier slots that hold a token; a padding query may see itself so
        # its (unused) output stays finite.
        causal_TT = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        new_B1TT = (causal_TT & mask_BT[:, None, :])[:, None] | torch.eye(T, dtype=torch.bool, device=device)
        earlier_B1TS = (state["bias_BS"][:, None, None, :slot] == 0).expand(B, 1, T, slot)
        hidden = self._forward(ids_BT, pos_BT, state, slot=slot, attend=torch.cat([earlier_B1TS, new_B1TT], dim=-1))
        state["length"] = slot + T
        state["next_pos_B"] = offset_B + mask_BT.long().sum(-1)
        return hidden

    def _prefill_shared(self, contexts, root_B: list[int], root_len_B: list[int], extra: int, device) -> tuple[torch.Tensor, dict]:
        """Prefill where contexts share roots (a prompt under several prefixes): each root once, its keys and
        values copied into the rows of its contexts (slots [0, Lr)), then every context's rest on top of
        them (slots [Lr, Lr + Ls)). Positions, not slots, place a token, so the gap between is padding."""
        B, R = len(contexts), max(root_B) + 1
        roots = [None] * R
        for b, r in enumerate(root_B):
            if r >= 0:
                roots[r] = contexts[b][: root_len_B[b]]
        root_ids, root_mask = _left_padded(roots, device)
        suffix_ids, suffix_mask = _left_padded([c[n:] for c, n in zip(contexts, root_len_B)], device)
        Lr, Ls = root_ids.shape[1], suffix_ids.shape[1]
        root_state = self._new_state(R, Lr, 0, device)
        self._extend(root_state, root_ids, root_mask, torch.zeros(R, dtype=torch.long, device=device))
        state = self._new_state(B, Lr + Ls, extra, device)
        rows = torch.tensor([b for b in range(B) if root_B[b] >= 0], device=device)
        which = torch.tensor([root_B[b] for b in range(B) if root_B[b] >= 0], device=device)
        for mine, theirs in zip(state["k"] + state["v"], root_state["k"] + root_state["v"]):
            if mine.shape[-1] != theirs.shape[-1]:  # keys: the slot is the last dimension
                mine[rows, :, :, :Lr] = theirs[which, :, :, :Lr]
            else:
                mine[rows, :, :Lr] = theirs[which, :, :Lr]
        state["bias_BS"][rows, :Lr] = root_state["bias_BS"][which, :Lr]
        state["length"] = Lr
        hidden = self._extend(state, suffix_ids, suffix_mask, torch.tensor(root_len_B, device=device))
        return hidden, state

    def decode(self, tokens_B: torch.Tensor, state: dict) -> torch.Tensor:
        slot, B, Hkv = state["length"], len(tokens_B), self.n_kv_heads
        if slot == state["bias_BS"].shape[1]:
            _grow(state, min(state["capacity"], slot + CACHE_BLOCK))
        state["bias_BS"][:, slot] = 0.0
        bias = state["bias_BS"][:, None, None, :].expand(B, Hkv, 1, -1).reshape(B * Hkv, 1, -1)  # [B*Hkv, 1, S]
        hidden = self._forward(tokens_B[:, None], state["next_pos_B"][:, None], state, slot=slot, attend=bias)
        state["length"] = slot + 1
        state["next_pos_B"] = state["next_pos_B"] + 1
        return self._logits(hidden[:, -1])

    def _forward(self, ids_BT, pos_BT, state, slot: int, attend: torch.Tensor) -> torch.Tensor:
        B, T = ids_BT.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        end = slot + T
        hidden = F.embedding(ids_BT, self.embed).float()  # the residual stream, float32
        rotation = self.rotation[pos_BT][:, :, None]  # [B, T, 1, D/2]
        for i, layer in enumerate(self.layers):
            x = _normalize(hidden, layer.in_eps).to(self.dtype)
            qkv = self._linear(x, layer.qkv_w, layer.qkv_b).view(B, T, H + 2 * Hkv, D)
            qk, v = qkv[:, :, : H + Hkv], qkv[:, :, H + Hkv :]
            if layer.q_norm is not None:
                qk = torch.cat([_rms_norm(qk[:, :, :H], layer.q_norm), _rms_norm(qk[:, :, H:], layer.k_norm)], dim=2)
            qk = _rotate(qk, rotation)  # [B, T, H + Hkv, D]
            if qk.dtype != self.dtype:  # qwen3's q/k norms have float32 gains
                qk = qk.to(self.dtype)
            keys_T, values = state["k"][i], state["v"][i]  # [B, Hkv, D, S], [B, Hkv, S, D]
            keys_T[:, :, :, slot:end] = qk[:, :, H:].permute(0, 2, 3, 1)
            values[:, :, slot:end] = v.transpose(1, 2)
            if attend.dtype == torch.bool:  # prefill: T queries per row
                q = qk[:, :, :H].transpose(1, 2)
                keys = keys_T[:, :, :, :end].transpose(2, 3).contiguous()
                out = F.scaled_dot_product_attention(
                    q, keys, values[:, :, :end], attn_mask=attend, scale=self.scale, enable_gqa=Hkv != H
                )
                out = out.transpose(1, 2).reshape(B, T, H * D)
            else:  # one query per row over every cache slot; the G query heads of a key head form one product
                q = qk[:, 0, :H].reshape(B * Hkv, H // Hkv, D)
                scores = torch.baddbmm(attend, q, keys_T.view(B * Hkv, D, -1), alpha=self.scale)
                out = torch.bmm(torch.softmax(scores, dim=-1), values.view(B * Hkv, -1, D)).view(B, 1, H * D)
            hidden = hidden + self._linear(out, layer.o_w, layer.o_b)
            gate, up = self._linear(_normalize(hidden, layer.post_eps).to(self.dtype), layer.gate_up_w, layer.gate_up_b).chunk(2, dim=-1)
            hidden = hidden + self._linear(layer.act(gate) * up, layer.down_w, layer.down_b)
        return hidden

    def _logits(self, hidden_BH: torch.Tensor) -> torch.Tensor:
        return self._linear(_normalize(hidden_BH, self.final_eps).to(self.dtype), self.lm_head, None).float()


class HFBackend:
    """The model's own forward with a DynamicCache: any causal LM, with more per-step overhead."""

    def __init__(self, model: PreTrainedModel, dtype: torch.dtype | None = None):
        self.model = model
        self.dtype = dtype or rollout_dtype(model)

    def autocast(self):
        return _autocast_to(self.model, self.dtype)

    def sample(self, logits_BV, params, generator):
        return sample_next(logits_BV, params, generator)

    def prefill(self, ids_BP: torch.Tensor, mask_BP: torch.Tensor, capacity: int) -> tuple[torch.Tensor, dict]:
        cache = DynamicCache(config=self.model.config)
        pos_BP = (mask_BP.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids_BP, attention_mask=mask_BP.long(), position_ids=pos_BP, cache=cache, use_cache=True)
        state = {"cache": cache, "mask_BS": mask_BP.long(), "next_pos_B": mask_BP.long().sum(-1)}
        return out.logits[:, -1].float(), state

    def decode(self, tokens_B: torch.Tensor, state: dict) -> torch.Tensor:
        mask_BS = torch.cat([state["mask_BS"], state["mask_BS"].new_ones(len(tokens_B), 1)], dim=1)
        out = self.model(
            input_ids=tokens_B[:, None],
            attention_mask=mask_BS,
            position_ids=state["next_pos_B"][:, None],
            cache=state["cache"],
            use_cache=True,
        )
        state["mask_BS"] = mask_BS
        state["next_pos_B"] = state["next_pos_B"] + 1
        return out.logits[:, -1].float()

    @staticmethod
    def repeat(state: dict, repeats: torch.Tensor) -> dict:
        cache = state["cache"]
        # DynamicCache repeats by a constant; rows with other counts are gathered by index instead.
        rows = torch.repeat_interleave(torch.arange(len(repeats), device=repeats.device), repeats)
        cache.batch_select_indices(rows)
        return {"cache": cache, "mask_BS": state["mask_BS"][rows], "next_pos_B": state["next_pos_B"][rows]}

    @staticmethod
    def select(state: dict, rows: torch.Tensor) -> dict:
        state["cache"].batch_select_indices(rows)
        return {"cache": state["cache"], "mask_BS": state["mask_BS"][rows], "next_pos_B": state["next_pos_B"][rows]}


def _norm_params(norm: torch.nn.Module) -> tuple[torch.Tensor, float]:
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
    if eps is None:
        raise TypeError(f"{type(norm).__name__} is not an RMSNorm with a known epsilon")
    return norm.weight, float(eps)


def _permuted_norm(norm: torch.nn.Module | None, order: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    if norm is None:
        return None
    weight, eps = _norm_params(norm)
    return weight[order], eps


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its gain (folded into the next projection), statistics in float32 as in Llama."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rms_norm(x: torch.Tensor, params: tuple[torch.Tensor, float]) -> torch.Tensor:
    weight, eps = params
    return weight * _normalize(x, eps)


def _rotate(x_BTHD: torch.Tensor, rotation_BT1R: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on pair-interleaved heads: (x[2i] + i x[2i+1]) * (cos + i sin)."""
    if x_BTHD.dtype != torch.float32:
        return _rotate(x_BTHD.float(), rotation_BT1R).to(x_BTHD.dtype)
    pairs = torch.view_as_complex(x_BTHD.reshape(*x_BTHD.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation_BT1R).flatten(-2)


def _unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (sirl.model.base_causal_lm), or the model itself."""
    return model.get_base_model() if type(model).__module__.startswith("peft.") else model


def _linear(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias a linear layer applies; for a peft LoRA layer, its base weight plus the active
    adapters' scaled B @ A (peft's get_delta_weight), so decoding samples from the adapted model."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight, module.bias
    weight = base.weight
    if not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
        for name in module.active_adapters:
            if name in getattr(module, "lora_A", {}):
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def pick_backend(model: PreTrainedModel, dtype: torch.dtype | None = None) -> FastBackend | HFBackend:
    """The backend for ``model`` decoding in ``dtype`` (default :func:`rollout_dtype`): Llama-shaped models
    get :class:`LargeModelBackend` from ``sirl.model.LARGE_MODEL_PARAMETERS`` on, :class:`FastBackend` below it
    (sirl's own character-level policies: their sampled numbers are those of earlier versions)."""
    inner = _unwrap(model)
    decoder = getattr(inner, "model", None)
    fast = (
        inner.config.model_type in FAST_MODEL_TYPES
        and decoder is not None
        and hasattr(decoder, "rotary_emb")
        and not getattr(inner.config, "sliding_window", None)
    )
    if not fast:
        return HFBackend(inner, dtype or rollout_dtype(model))
    return (LargeModelBackend if is_large_model(model) else FastBackend)(model, dtype)


CACHE_BLOCK = 64
"""LargeModelBackend's cache grows by this many slots at a time, and its attention runs over all of them:
oneDNN builds a kernel for every new shape of a bf16 product (several milliseconds each), so a shape
that changes every step, or a slice of a larger buffer (copied before the product), cost more than
attending to up to 63 masked slots."""


def _left_padded(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), True
    return ids.to(device), mask.to(device)


def _shared_roots(contexts: list[list[int]]) -> tuple[list[int], list[int]] | None:
    """Which contexts share a root (a common first part: a prompt under several prefixes, or the chat
    template's system turn), as each context's root index (-1: none) and root length; None when sharing
    would not compute fewer (padded) tokens than prefilling every context whole.

    Contexts are sorted, so that those with a common first part are neighbours, and cut into groups where
    neighbours share fewer than a threshold of tokens; a group's root is what all its contexts share, less
    at least one token per context (the last token's logits come from the second pass). Every threshold
    among the neighbours' common lengths is tried, and the one whose two passes are cheapest wins: R
    roots of Lr slots plus every context's rest in Ls slots, against U contexts of P slots."""
    U = len(contexts)
    if U < 2:
        return None
    order = sorted(range(U), key=lambda i: contexts[i])
    common = [_common_length(contexts[a], contexts[b]) for a, b in zip(order, order[1:])]
    best_cost, best = U * max(map(len, contexts)), None
    for threshold in sorted(set(common) - {0}):
        root_B, root_len_B, n_roots, start = [-1] * U, [0] * U, 0, 0
        for end in range(1, U + 1):  # the group order[start:end] ends where neighbours share too little
            if end < U and common[end - 1] >= threshold:
                continue
            group, start_of_group = order[start:end], start
            start = end
            if len(group) < 2:
                continue
            shared = min(min(common[start_of_group : end - 1]), min(len(contexts[i]) for i in group) - 1)
            if shared < 1:
                continue
            for i in group:
                root_B[i], root_len_B[i] = n_roots, shared
            n_roots += 1
        if not n_roots:
            continue
        cost = n_roots * max(root_len_B) + U * max(len(c) - n for c, n in zip(contexts, root_len_B))
        if cost < best_cost:
            best_cost, best = cost, (root_B, root_len_B)
    return best


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def _grow(state: dict, slots: int) -> None:
    """Widen a LargeModelBackend cache in place to ``slots`` slots (new slots zero, masked)."""
    old = state["bias_BS"].shape[1]
    state["k"] = [F.pad(t, (0, slots - old)) for t in state["k"]]
    state["v"] = [F.pad(t, (0, 0, 0, slots - old)) for t in state["v"]]
    state["bias_BS"] = F.pad(state["bias_BS"], (0, slots - old), value=float("-inf"))


PACKED_ROWS_HINT = 64
"""The rows oneDNN is told to pack the weights for; any number of rows runs on the same packed weights."""


def rollout_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the engine decodes in: ``model.sirl_rollout_dtype`` when set (sirl train sets it from
    ``rollout.dtype``, see :func:`resolve_rollout_dtype`), else the compute dtype (sirl.model.compute_dtype)."""
    return getattr(model, "sirl_rollout_dtype", None) or compute_dtype(model)


def resolve_rollout_dtype(name: str, model: torch.nn.Module) -> torch.dtype:
    """``rollout.dtype`` for ``model``: "float32" or "bfloat16" as named; "auto" is bfloat16 for a model of
    at least ``sirl.model.LARGE_MODEL_PARAMETERS`` on a device with native bf16 arithmetic (:func:`native_bf16`),
    else the training compute dtype."""
    if name == "auto":
        weights = next(model.parameters())
        return torch.bfloat16 if is_large_model(model) and native_bf16(weights.device) else compute_dtype(model)
    if name not in ROLLOUT_DTYPES:
        raise ValueError(f"rollout.dtype={name!r} is not one of auto, {', '.join(ROLLOUT_DTYPES)}")
    return ROLLOUT_DTYPES[name]


ROLLOUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bf16(device: torch.device) -> bool:
    """The device multiplies bf16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX-BF16 (read from /proc/cpuinfo; elsewhere False, so "auto" keeps float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _onednn_linear_available(dtype: torch.dtype) -> bool:
    """oneDNN's packed linear exists in this torch build and computes ``dtype`` (a product of 2 x 3 checked)."""
    try:
        weight = torch.arange(6.0).view(3, 2).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 2)
        x = torch.ones(2, 2, dtype=dtype)
        return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "").float(), F.linear(x, weight).float()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to(dtype)


def _autocast_to(model: torch.nn.Module, dtype: torch.dtype):
    """Autocast to ``dtype`` when it is not the weights' dtype (bf16 compute on float32 weights)."""
    weights = next(model.parameters())
    if dtype == weights.dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=weights.device.type, dtype=dtype)


# --- sampling ------------------------------------------------------------------------------------


def before_stop(text: str, stop: tuple[str, ...]) -> str:
    """The response text up to its first stop string (what a verifier scores), or all of it."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


class NonFiniteLogits(FloatingPointError):
    """The policy produced a NaN or infinite logit while sampling: its weights are broken (a diverged
    update). The trainer treats it like a non-finite loss: the step is skipped and counted."""


def sample_next(
    logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens and their log-probs under the temperature-scaled (untruncated) distribution."""
    if params.temperature == 0:
        logp_BV = F.log_softmax(logits_BV, dim=-1)
        tokens_B = logits_BV.argmax(-1)
    else:
        logp_BV = F.log_softmax(logits_BV if params.temperature == 1 else logits_BV / params.temperature, dim=-1)
        probs_BV = logp_BV.exp()
        if params.top_p < 1:
            # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p.
            sorted_probs, order = probs_BV.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs_BV = torch.zeros_like(probs_BV).scatter(-1, order, sorted_probs)
        tokens_B = torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)
    return tokens_B, logp_BV.gather(-1, tokens_B[:, None]).squeeze(-1)


SAMPLE_BLOCK = 256
"""Vocabulary entries per block of :func:`sample_next_by_blocks`."""


def sample_next_by_blocks(
    logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_next` by inverse transform sampling with one uniform number per row.

    ``torch.multinomial`` draws an exponential number for every vocabulary entry (Efraimidis-Spirakis);
    at V = 49,152 and 64 rows that took longer on a CPU than the model's decoding step. Here a row's
    probabilities are summed in blocks of :data:`SAMPLE_BLOCK`; a uniform number in [0, total) picks
    the block through the cumulative block sums and then the token through the cumulative sum inside
    the block, so no cumulative sum runs over the whole vocabulary (whose float32 rounding would grow
    with V). The distribution is the same as :func:`sample_next`'s (tests/test_rollout_bf16.py checks the
    frequencies); the random draws differ, so the tokens do too. Greedy and top-p < 1 use
    :func:`sample_next` (top-p sorts the vocabulary anyway)."""
    if params.temperature == 0 or params.top_p < 1:
        return sample_next(logits_BV, params, generator)
    scaled_BV = logits_BV if params.temperature == 1 else logits_BV / params.temperature
    B, V = scaled_BV.shape
    max_B1 = scaled_BV.max(-1, keepdim=True).values
    weights_BV = (scaled_BV - max_B1).exp_()  # unnormalized probabilities, the largest 1
    pad = -V % SAMPLE_BLOCK
    blocks_BNK = F.pad(weights_BV, (0, pad)).view(B, -1, SAMPLE_BLOCK)
    block_cdf_BN = blocks_BNK.sum(-1).cumsum(-1)
    total_B1 = block_cdf_BN[:, -1:]
    # Uniform in [0, total): the first cumulative sum above it then always ends a block (or entry) of
    # positive weight, however the products round.
    u_B1 = torch.minimum(torch.rand(B, 1, generator=generator, device=logits_BV.device) * total_B1, _below(total_B1))
    block_B1 = torch.searchsorted(block_cdf_BN, u_B1, right=True)
    before_B1 = torch.where(block_B1 > 0, block_cdf_BN.gather(-1, (block_B1 - 1).clamp(min=0)), torch.zeros_like(u_B1))
    inner_cdf_BK = blocks_BNK[torch.arange(B, device=logits_BV.device), block_B1.squeeze(-1)].cumsum(-1)
    inner_u_B1 = torch.minimum((u_B1 - before_B1).clamp(min=0), _below(inner_cdf_BK[:, -1:]))
    inner_B1 = torch.searchsorted(inner_cdf_BK, inner_u_B1, right=True)
    tokens_B = (block_B1 * SAMPLE_BLOCK + inner_B1).squeeze(-1)
    # log p = scaled logit - logsumexp, the logsumexp from the same block sums.
    logp_B = scaled_BV.gather(-1, tokens_B[:, None]).squeeze(-1) - (max_B1 + total_B1.log()).squeeze(-1)
    return tokens_B, logp_B


class _StopCandidates:
    """Which new tokens can complete a stop string, so that the per-step text search runs only on their rows.

    A token completes a stop string when its text holds the string's last character; a token whose own
    text has no such character can still complete one when that text depends on its neighbours: a piece
    of a multi-byte character (it decodes alone to U+FFFD), a token that decodes alone to nothing, or, for
    a stop string ending in a space, any token (sentencepiece tokenizers drop a token's leading space
    when it is decoded alone). Each id is decoded alone once, on first sight.
    """

    def __init__(self, stop: tuple[str, ...], decode: Callable[[list[int]], str], vocab: int, device: torch.device):
        self.last_chars = {s[-1] for s in stop}
        self.every_token = " " in self.last_chars
        self.decode = decode
        self.known_V = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.candidate_V = torch.zeros(vocab, dtype=torch.bool, device=device)

    def of(self, tokens_A: torch.Tensor) -> torch.Tensor:
        """[A] bool: the rows whose new token may have completed a stop string."""
        if self.every_token:
            return torch.ones_like(tokens_A, dtype=torch.bool)
        fresh = tokens_A[~self.known_V[tokens_A]]
        if fresh.numel():
            for token in fresh.unique().tolist():
                text = self.decode([token])
                self.candidate_V[token] = not text or "\ufffd" in text or any(c in text for c in self.last_chars)
            self.known_V[fresh] = True
        return self.candidate_V[tokens_A]


def _below(x: torch.Tensor) -> torch.Tensor:
    """The largest float below each element of ``x`` (which is positive)."""
    return torch.nextafter(x, torch.zeros_like(x))


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    contexts: list[list[int]],
    params: SamplingParams,
    *,
    eos_ids: list[int] | int,
    pad_id: int,
    repeats: int | list[int] = 1,
    generator: torch.Generator | None = None,
    max_batch: int = 1024,
    backend: FastBackend | HFBackend | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> Generations:
    """Sample ``repeats[i]`` continuations of each token-id context; see the module docstring.

    Rows are processed in chunks of at most ``max_batch`` rows (whole contexts per chunk), so memory is
    bounded however many samples are asked for. ``decode`` (token ids to text) is needed for
    ``params.stop``: after each new token the row's last few tokens are decoded and searched for a stop string.
    """
    if params.stop and decode is None:
        raise ValueError("stop strings need decode (token ids -> text) to find them")
    if not contexts:
        raise ValueError("generate needs at least one context")
    if any(len(c) == 0 for c in contexts):
        raise ValueError("every context needs at least one token (a prompt)")
    counts = [repeats] * len(contexts) if isinstance(repeats, int) else list(repeats)
    if len(counts) != len(contexts) or any(r < 1 for r in counts):
        raise ValueError("repeats must be a positive int or one positive int per context")
    eos = torch.tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids))
    backend = backend or pick_backend(model)
    was_training = model.training
    model.eval()
    autocast = backend.autocast()  # bf16 compute on float32 weights where the backend needs autocast
    autocast.__enter__()
    try:
        chunks, start, rows = [], 0, 0
        for i, count in enumerate(counts):
            if rows and rows + count > max_batch:
                chunks.append(_generate_chunk(backend, contexts[start:i], counts[start:i], start, params, eos, pad_id, generator, decode))
                start, rows = i, 0
            rows += count
        chunks.append(_generate_chunk(backend, contexts[start:], counts[start:], start, params, eos, pad_id, generator, decode))
    finally:
        model.train(was_training)
        autocast.__exit__(None, None, None)
    width = max(c.tokens_BT.shape[1] for c in chunks)
    return Generations(
        tokens_BT=torch.cat([F.pad(c.tokens_BT, (0, width - c.tokens_BT.shape[1]), value=pad_id) for c in chunks]),
        logp_BT=torch.cat([F.pad(c.logp_BT, (0, width - c.logp_BT.shape[1])) for c in chunks]),
        mask_BT=torch.cat([F.pad(c.mask_BT, (0, width - c.mask_BT.shape[1])) for c in chunks]),
        truncated_B=torch.cat([c.truncated_B for c in chunks]),
        context_index_B=torch.cat([c.context_index_B for c in chunks]),
        stopped_B=torch.cat([c.stopped_B for c in chunks]) if params.stop else None,
    )


def _generate_chunk(
    backend: FastBackend | HFBackend,
    contexts: list[list[int]],
    counts: list[int],
    first_context: int,
    params: SamplingParams,
    eos: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None,
    decode: Callable[[list[int]], str] | None = None,
) -> Generations:
    device = backend.model.device
    eos = eos.to(device)
    P = max(len(c) for c in contexts)
    ids_UP = torch.full((len(contexts), P), pad_id, dtype=torch.long)
    mask_UP = torch.zeros((len(contexts), P), dtype=torch.bool)
    for i, context in enumerate(contexts):  # left padding: every row's last context token is at slot P-1
        ids_UP[i, P - len(context) :] = torch.tensor(context)
        mask_UP[i, P - len(context) :] = True
    ids_UP, mask_UP = ids_UP.to(device), mask_UP.to(device)
    repeats_U = torch.tensor(counts, device=device)

    logits_UV, state = backend.prefill(ids_UP, mask_UP, capacity=P + params.max_new_tokens)
    logits_BV = logits_UV.repeat_interleave(repeats_U, dim=0)
    state = backend.repeat(state, repeats_U)
    B, T = logits_BV.shape[0], params.max_new_tokens
    tokens_BT = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    logp_BT = torch.zeros((B, T), dtype=torch.float32, device=device)
    active_A = torch.arange(B, device=device)  # original row of each row still in the batch
    done_A = torch.zeros(B, dtype=torch.bool, device=device)
    compacted = False
    check_every = 1 if device.type == "cpu" else 8  # a host sync per check is free on CPU, not on GPU

    finite = torch.ones((), dtype=torch.bool, device=device)  # every logit so far was finite (no host sync)
    # A row that writes a stop string ends after the token that completes it: end_B is its length then.
    end_B = torch.full((B,), T, dtype=torch.long, device=device)
    stopped_B = torch.zeros(B, dtype=torch.bool, device=device)
    # A stop string of n characters lies within the last n tokens (a token decodes to at least one character,
    # or to part of one: a few more cover multi-byte characters split over byte tokens).
    window = max((len(s) for s in params.stop), default=0) + 4
    stop_candidates = _StopCandidates(params.stop, decode, logits_BV.shape[1], device) if params.stop else None
    for t in range(T):
        finite_A = torch.isfinite(logits_BV).all(-1)
        finite = finite & finite_A.all()
        # A broken row samples from uniform logits rather than crash inside torch.multinomial; `finite`
        # then refuses the whole chunk below. (On a CPU the check costs nothing and spares a pass over
        # [B, V] when every row is finite; the values are the same either way.)
        if device.type != "cpu" or not bool(finite_A.all()):
            logits_BV = torch.where(finite_A[:, None], logits_BV, torch.zeros_like(logits_BV))
        next_A, logp_A = backend.sample(logits_BV, params, generator)
        if compacted:
            tokens_BT[active_A, t], logp_BT[active_A, t] = next_A, logp_A
        else:  # every row still in place: a plain column write
            tokens_BT[:, t], logp_BT[:, t] = next_A, logp_A
        done_A = done_A | (next_A == eos[0] if len(eos) == 1 else torch.isin(next_A, eos))
        if params.stop:
            # Only rows whose new token could have completed a stop string are decoded (_StopCandidates).
            for a in (stop_candidates.of(next_A) & ~done_A).nonzero().flatten().tolist():
                tail = tokens_BT[active_A[a], max(0, t + 1 - window) : t + 1].tolist()
                # Each step checks the newest window, so a stop string found now was completed by this token.
                if any(stop in decode(tail) for stop in params.stop):
                    done_A[a] = True
                    end_B[active_A[a]] = t + 1
                    stopped_B[active_A[a]] = True
        if t == T - 1:
            break
        if t % check_every == 0:
            if not bool(finite):
                break
            live = int((~done_A).sum())
            if live == 0:
                break
            # Drop finished rows once they are half the batch: less work per step, at one cache copy.
            if check_every == 1 and len(active_A) > 8 and live <= len(active_A) // 2:
                keep = (~done_A).nonzero().squeeze(-1)
                state = backend.select(state, keep)
                active_A, next_A, done_A = active_A[keep], next_A[keep], done_A[keep]
                compacted = True
        logits_BV = backend.decode(next_A, state)

    if not bool(finite):
        raise NonFiniteLogits(f"the policy produced non-finite logits while sampling (by new token {t + 1}): its weights are broken")
    # A row is real up to and including its first EOS; after it, only padding.
    is_eos_BT = torch.isin(tokens_BT, eos)
    ended_before_BT = (is_eos_BT.long().cumsum(-1) - is_eos_BT.long()) > 0
    positions_BT = torch.arange(T, device=device)[None]
    mask_BT = (positions_BT <= t) & ~ended_before_BT & (positions_BT < end_B[:, None])
    tokens_BT = tokens_BT.masked_fill(~mask_BT, pad_id)
    logp_BT = logp_BT.masked_fill(~mask_BT, 0.0)
    width = max(int(mask_BT.sum(-1).max()), 1)
    context_index_B = torch.arange(first_context, first_context + len(contexts)).repeat_interleave(torch.tensor(counts))
    return Generations(
        tokens_BT=tokens_BT[:, :width].cpu(),
        logp_BT=logp_BT[:, :width].cpu(),
        mask_BT=mask_BT[:, :width].cpu(),
        truncated_B=(~(is_eos_BT & mask_BT).any(-1) & ~stopped_B).cpu(),
        context_index_B=context_index_B,
        stopped_B=stopped_B.cpu(),
    )

