"""Vision-language connectors: encoder patch tokens [N, P, D] -> image tokens [N, Q, llm width].

- `CAbstractor` as Honeybee defines it (arXiv 2312.06742, kakaobrain/honeybee `CAbstractor`):
  learned position embedding -> grid -> a stage of RegNet bottleneck blocks (timm `RegStage`:
  1x1 conv, depthwise 3x3, squeeze-excite 0.25, 1x1, residual; LayerNorm2d + SiLU) -> adaptive
  average pooling to sqrt(Q) x sqrt(Q) -> a second stage -> MLP readout (Linear, SiLU, Linear).
  With `depth=0` there are no stages: average pooling + the readout. MM1's "average pooling"
  connector is exactly that module (and no position embedding), not a copy of it.
- `AttentionPool`: Q learned queries cross-attend to the patches, then the same readout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmdata.mm1.config import ConnectorConfig


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an [N, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_norm(cin: int, cout: int, kernel: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False), LayerNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1, self.act = nn.Conv2d(channels, reduced, 1), nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class Bottleneck(nn.Module):
    """timm's RegNet `Bottleneck` with bottle_ratio 1, group_size 1 (depthwise), se_ratio 0.25."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv_norm(cin, cout, 1)
        self.conv2 = conv_norm(cout, cout, 3, groups=cout)
        self.se = SqueezeExcite(cout, round(cin * 0.25))
        self.conv3 = conv_norm(cout, cout, 1, act=False)
        self.shortcut = conv_norm(cin, cout, 1, act=False) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.se(self.conv2(self.conv1(x)))) + self.shortcut(x))


def stage(depth: int, cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(cin if i == 0 else cout, cout) for i in range(depth)])


def readout(depth: int, cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(cin, cout)]
    for _ in range(depth - 1):
        layers += [nn.SiLU(), nn.Linear(cout, cout)]
    return nn.Sequential(*layers)


class CAbstractor(nn.Module):
    def __init__(self, cfg: ConnectorConfig, patches: int, width: int, out: int):
        super().__init__()
        self.side = math.isqrt(cfg.tokens)
        if self.side**2 != cfg.tokens:
            raise ValueError(f"connector tokens={cfg.tokens} is not a square")
        if math.isqrt(patches) ** 2 != patches:
            raise ValueError(f"the encoder gives {patches} patch tokens, not a square grid")
        pos = cfg.type != "avgpool" if cfg.pos_emb is None else cfg.pos_emb
        self.pos_emb = nn.Parameter(torch.zeros(1, patches, width)) if pos else None
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=0.02)
        depth = 0 if cfg.type == "avgpool" else cfg.depth
        hidden = cfg.hidden or width
        self.pool = nn.AdaptiveAvgPool2d((self.side, self.side))
        self.s1 = stage(depth, width, hidden)
        self.s2 = stage(depth, hidden, hidden)
        self.readout = readout(cfg.mlp_depth, hidden if depth else width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_emb is not None:
            x = x + self.pos_emb
        n, p, d = x.shape
        hw = math.isqrt(p)
        x = x.transpose(1, 2).reshape(n, d, hw, hw)
        x = self.s2(self.pool(self.s1(x)))
        return self.readout(x.flatten(2).transpose(1, 2))


class AttentionPool(nn.Module):
    def __init__(self, cfg: ConnectorConfig, patches: int, width: int, out: int):
        super().__init__()
        hidden = cfg.hidden or width
        if hidden % cfg.heads:
            raise ValueError(f"attnpool width {hidden} is not divisible by heads={cfg.heads}")
        pos = True if cfg.pos_emb is None else cfg.pos_emb
        self.pos_emb = nn.Parameter(torch.zeros(1, patches, width)) if pos else None
        self.queries = nn.Parameter(torch.zeros(cfg.tokens, hidden))
        for p in (self.pos_emb, self.queries):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(hidden, cfg.heads, kdim=width, vdim=width, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.readout = readout(cfg.mlp_depth, hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_emb is not None:
            x = x + self.pos_emb
        kv = self.norm_kv(x)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        y, _ = self.attn(q, kv, kv, need_weights=False)
        return self.readout(self.norm(y + q))


def build_connector(cfg: ConnectorConfig, patches: int, width: int, out: int) -> nn.Module:
    """`patches` encoder tokens of `width` per image -> `cfg.tokens` tokens of `out` (the LLM's width)."""
    cls = AttentionPool if cfg.type == "attnpool" else CAbstractor
    return cls(cfg, patches, width, out)
