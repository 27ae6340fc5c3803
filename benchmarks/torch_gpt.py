"""A PyTorch reference of jaxbig's GPT, for benchmarks only (`pip install -e '.[bench]'`).

The same architecture as `jaxbig.models.gpt.Model` with `tie_embeddings=True`: token
embedding, num_layers x pre-norm blocks (RMSNorm -> causal multi-head attention with
half-split RoPE -> residual; RMSNorm -> SwiGLU MLP -> residual), a final RMSNorm and the
tied unembedding. No biases. Same parameter count (checked by benchmarks/train_step.py) and
so the same model FLOPs. Trained the way a PyTorch user would write it: AdamW (fused
foreach), global-norm clipping, `F.scaled_dot_product_attention(is_causal=True)`,
optionally `torch.compile`.

Nothing in `jaxbig/` imports this file; torch is never a runtime dependency.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope(x, sin, cos):
    """x [batch, heads, seq, head_dim]; half-split rotation (GPT-NeoX / Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_norm, self.mlp_norm = RMSNorm(embed_dim), RMSNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.out = nn.Linear(embed_dim, embed_dim, bias=False)
        self.gate_up = nn.Linear(embed_dim, 2 * mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, embed_dim, bias=False)

    def forward(self, x, sin, cos):
        b, s, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, s, 3, self.num_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, s, head_dim]
        q, k = rope(q, sin, cos), rope(k, sin, cos)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(h.transpose(1, 2).reshape(b, s, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class GPT(nn.Module):
    def __init__(self, vocab_size, num_layers, num_heads, embed_dim, mlp_dim, max_len=4096):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_dim) for _ in range(num_layers))
        self.final_norm = RMSNorm(embed_dim)
        head_dim = embed_dim // num_heads
        inv_freq = 10000.0 ** (-torch.arange(head_dim // 2, dtype=torch.float32) * 2 / head_dim)
        angle = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq
        self.register_buffer('sin', angle.sin(), persistent=False)
        self.register_buffer('cos', angle.cos(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        s = tokens.shape[1]
        sin, cos = self.sin[:s], self.cos[:s]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, sin, cos)
        return self.final_norm(x) @ self.embed.weight.T


def make_train_step(model, lr=3e-3, weight_decay=0.1, clip_norm=1.0, compile_step=False):
    """A closure doing one AdamW update on (inputs, targets) int64 [batch, seq]; returns loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                            weight_decay=weight_decay, foreach=True)

    def loss_fn(inputs, targets):
        logits = model(inputs)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    forward_backward = torch.compile(loss_fn) if compile_step else loss_fn

    def step(inputs, targets):
        opt.zero_grad(set_to_none=True)
        loss = forward_backward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        return loss.detach()

    return step


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())

