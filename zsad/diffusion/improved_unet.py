"""The improved-diffusion UNet (openai/improved-diffusion, as forked by DiffPath), written from
docs/improved_diffusion_format.md §2. Module names equal the checkpoint keys, so published
state dicts load strictly with no renaming."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t·f_i) …, sin(t·f_i) …] with f_i = exp(−ln(max_period)·i/half), in float32 (docs/improved_diffusion_format.md §2.2)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, scale_shift: bool = True):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out))
        self.out_layers = nn.Sequential(GroupNorm32(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Without autograd, SiLU, scale-shift and the residual write into tensors this block owns: the same
        # operations in the same order, bit for bit, with fewer activation-sized allocations per call.
        inplace = not torch.is_grad_enabled()
        norm_in, _, conv_in = self.in_layers
        h = conv_in(F.silu(norm_in(x), inplace=inplace))
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        norm_out, _, dropout, conv_out = self.out_layers
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = norm_out(h)
            h = h.mul_(1 + scale).add_(shift) if inplace else h * (1 + scale) + shift
        else:
            h = norm_out(h.add_(e) if inplace else h + e)
        h = conv_out(dropout(F.silu(h, inplace=inplace)))
        skip = self.skip_connection(x)
        return h.add_(skip) if inplace else skip + h


class AttentionBlock(nn.Module):
    """Self-attention over positions with the legacy per-head [q | k | v] channel layout (docs/improved_diffusion_format.md §2.4)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.use_sdpa = False  # fused scaled_dot_product_attention (zsad.diffusion.fast); same maths
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        d = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * d, length).split(d, dim=1)
        if self.use_sdpa:  # softmax(qᵀk/√d)·v in one fused kernel (its default scale is 1/√d, as below)
            # (batch, heads, length, d), contiguous: the fused CPU kernel needs 4-D inputs with unit last stride (else: math path)
            q, k, v = (z.reshape(b, self.num_heads, d, length).transpose(-1, -2).contiguous() for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2)
            out = self.proj_out(a.reshape(b, c, length))
            return (out.add_(x) if not torch.is_grad_enabled() else x + out).reshape(b, c, *spatial)
        scale = 1 / math.sqrt(math.sqrt(d))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepBlock(nn.Sequential):
    """A block of layers; ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ImprovedUNet(nn.Module):
    """UNetModel of improved-diffusion (no class conditioning). forward(x, t_model) → [B, out_channels, S, S]."""

    def __init__(
        self,
        image_size: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_heads: int = 4,
        num_heads_upsample: int = -1,
        dropout: float = 0.0,
        learn_sigma: bool = True,
        use_scale_shift_norm: bool = True,
        channel_mult: Sequence[int] | None = None,
    ):
        super().__init__()
        if channel_mult is None:
            if image_size not in CHANNEL_MULT:
                raise ValueError(f"improved-diffusion supports image sizes {sorted(CHANNEL_MULT)}, not {image_size}")
            channel_mult = CHANNEL_MULT[image_size]
        mc, emb_dim = model_channels, 4 * model_channels
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        attn_ds = {image_size // int(r) for r in attention_resolutions}
        self.model_channels = mc
        self.out_channels = 6 if learn_sigma else 3
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        res = lambda ci, co: ResBlock(ci, co, emb_dim, dropout, use_scale_shift_norm)  # noqa: E731
        self.input_blocks = nn.ModuleList([TimestepBlock(nn.Conv2d(3, mc, 3, padding=1))])
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(TimestepBlock(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepBlock(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepBlock(res(ch, ch), AttentionBlock(ch, num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * mc)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepBlock(*layers))
        self.out = nn.Sequential(GroupNorm32(mc), nn.SiLU(), nn.Conv2d(mc, self.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t_model, self.model_channels))
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
