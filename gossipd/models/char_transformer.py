"""A small GPT for character-level language modelling, after nanoGPT's model.py.

Token and learned position embeddings, pre-LayerNorm blocks of causal self-attention and a 4x GELU MLP, a
final LayerNorm and a linear head. The head is not tied to the token embedding: the gossip layer mixes
and compresses each parameter tensor on its own, and a tensor shared by two modules would be mixed twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import ModelError, check_at_least, check_dropout, check_spec
from gossipd.task.fields import bounds


@dataclass(frozen=True, kw_only=True)
class CharTransformerConfig:
    """`[model] name = "char-transformer"`; the block size and vocabulary come from the data.

    n_layer: transformer blocks.
    n_head: attention heads per block; must divide n_embd.
    n_embd: the width of the residual stream.
    dropout: applied to embeddings, attention weights and each block's outputs during training.
    """

    n_layer: int = field(default=2, metadata=bounds(min=1))
    n_head: int = field(default=4, metadata=bounds(min=1))
    n_embd: int = field(default=128, metadata=bounds(min=1))
    dropout: float = field(default=0.0, metadata=bounds(min=0.0, max=0.99))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: CharTransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        hs = c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
        q = q.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # type: ignore[no-any-return]


class MLP(nn.Module):
    def __init__(self, config: CharTransformerConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.c_fc(x))  # (B, T, 4C)
        return self.dropout(self.c_proj(x))  # type: ignore[no-any-return]  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: CharTransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))  # type: ignore[no-any-return]


class CharTransformer(nn.Module):
    def __init__(self, config: CharTransformerConfig, block_size: int, vocab_size: int) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        self.wpe = nn.Embedding(block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, vocab_size, bias=False)
        self._init_weights(config.n_layer)

    def _init_weights(self, n_layer: int) -> None:
        # GPT-2's init, as in nanoGPT: small normal weights, and the projections that write into the
        # residual stream scaled down by depth so the stream's variance does not grow with n_layer.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise ModelError(f"char-transformer expects token ids of shape (B, T), found {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ModelError(f"char-transformer: {t} tokens exceed the block size {self.block_size}")
        pos = torch.arange(t, dtype=torch.long, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # type: ignore[no-any-return]  # (B, T, vocab_size)


def build(config: CharTransformerConfig, spec: InputSpec) -> nn.Module:
    check_spec(spec, model="char-transformer", kind="language", ndim=1)
    check_at_least(config.n_layer, 1, name="n_layer")
    check_at_least(config.n_head, 1, name="n_head")
    check_at_least(config.n_embd, 1, name="n_embd")
    check_dropout(config.dropout)
    if config.n_embd % config.n_head != 0:
        raise ModelError(f"char-transformer: n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    return CharTransformer(config, block_size=spec.input_shape[0], vocab_size=spec.num_classes)
