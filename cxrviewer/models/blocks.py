"""Attention blocks shared by the five seed models; one implementation of each idea.

- :class:`SEBlock` (squeeze-and-excitation): MobileNet-Lung's stem, DPN-SE's dual-path blocks,
  Fusion-TL's SE selector (on a feature vector).
- :class:`ECABlock` (efficient channel attention) and :func:`eca_kernel_size`: Fusion-TL's ECA selector.
- :class:`PositionSelfAttention` (SAGAN / DANet position self-attention): CS-ConvNeXt's spatial branch
  and DA-COVID's PAM. It records the attention each key position *received* on the last forward
  (the column sums of the softmax affinity), which is what the viewer displays.
- :class:`ChannelSelfAttention` (softmax of the C×C channel affinity applied to the features):
  CS-ConvNeXt's channel branch and DA-COVID's CAM.
- :class:`PositionAttentionModule`, :class:`ChannelAttentionModule` (DANet PAM/CAM with their learnable
  α, β from 0) and :class:`CSBlock` (parallel spatial+channel, summed, learnable γ from 0).

All blocks are shape-agnostic in batch and spatial size, use ``reshape`` (channels_last safe), and
compute their softmaxes in float32 (bf16 autocast would otherwise saturate the channel affinities, whose
logits are sums over thousands of positions). The position softmax takes bf16 energies as they are: the
kernel exponentiates and sums in fp32 anyway, and the explicit conversion of a large affinity matrix
cost more than the softmax.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al.): global pool, FC reduce ×r, ReLU, FC, sigmoid, rescale.

    Accepts feature maps (B, C, H, W) or feature vectors (B, C); on a vector the "squeeze" is the vector
    itself (nothing to pool), which is how the Fusion-TL paper applies SE to concatenated features.
    ``last_scale`` keeps the gate of the last forward (B, C), detached, for display."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 1) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.channels = channels
        self.reduction = reduction
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.last_scale: Optional[torch.Tensor] = None

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)
        self.last_scale = g.detach()
        if x.dim() == 4:
            return x * g[:, :, None, None].to(x.dtype)
        return x * g.to(x.dtype)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size: k = |log2(C)/γ + b/γ|, truncated, made odd (upwards)."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


class ECABlock(nn.Module):
    """Efficient channel attention (Wang et al.): a 1-D conv of size k across the channel descriptor,
    sigmoid, rescale; no dimensionality reduction. Maps (B, C, H, W) are pooled first; vectors (B, C)
    are their own descriptor."""

    def __init__(self, channels: int, k: Optional[int] = None, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        self.k = int(k) if k is not None else eca_kernel_size(channels, gamma, b)
        if self.k % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd, got {self.k}")
        self.conv = nn.Conv1d(1, 1, kernel_size=self.k, padding=self.k // 2, bias=False)
        self.last_scale: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        g = torch.sigmoid(self.conv(s.unsqueeze(1)).squeeze(1))
        self.last_scale = g.detach()
        if x.dim() == 4:
            return x * g[:, :, None, None].to(x.dtype)
        return x * g.to(x.dtype)


class PositionSelfAttention(nn.Module):
    """Self-attention over positions, SAGAN-style, without residual or scale (callers add those).

    query = g(x), key = f(x) with ``qk_channels`` (C/8); value = h(x) with ``v_channels``; attention
    A[q, k] = softmax_k(query_q · key_k); out_q = Σ_k A[q, k] value_k; an optional 1×1 conv ``o`` maps
    the values back to ``out_channels`` (SAGAN's v; DANet's PAM has none since V keeps C).

    ``kv_pool`` > 1 max-pools keys and values (SAGAN/BigGAN's economy): the affinity becomes
    HW × HW/p² instead of HW × HW, which matters at 56×56 (3136² per image otherwise).

    ``last_received`` (B, Hk, Wk): the attention each key position received on the last forward, the
    mean over queries of A[:, k] times the number of keys (1 everywhere = uniform attention), detached,
    float32. Computing it is one reduction over a matrix already in memory.
    """

    def __init__(self, in_channels: int, qk_channels: int, v_channels: int,
                 out_channels: Optional[int] = None, kv_pool: int = 1) -> None:
        super().__init__()
        self.f = nn.Conv2d(in_channels, qk_channels, 1)  # key
        self.g = nn.Conv2d(in_channels, qk_channels, 1)  # query
        self.h = nn.Conv2d(in_channels, v_channels, 1)  # value
        self.o = nn.Conv2d(v_channels, out_channels, 1) if out_channels is not None else None
        self.kv_pool = int(kv_pool)
        self.records = True  # False (set through CXRModel.records_attention): skip last_received
        self.last_received: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        q = self.g(x).flatten(2)  # (B, c', N)
        k = self.f(x)
        v = self.h(x)
        if self.kv_pool > 1 and hgt >= 2 * self.kv_pool and wid >= 2 * self.kv_pool:
            k = F.max_pool2d(k, self.kv_pool)
            v = F.max_pool2d(v, self.kv_pool)
        hk, wk = k.shape[-2:]
        k = k.flatten(2)  # (B, c', M)
        v = v.flatten(2)  # (B, cv, M)
        energy = torch.bmm(q.transpose(1, 2), k)  # (B, N, M)
        # bf16 energies: the CPU kernel already exponentiates and sums in fp32; converting a 16×3136×784
        # affinity to fp32 and back (the first CS block) cost more than the softmax itself
        attn = energy.softmax(dim=-1) if energy.dtype == torch.bfloat16 else energy.float().softmax(dim=-1)
        m = attn.shape[-1]
        self.last_received = (attn.float().mean(dim=1) * m).reshape(b, hk, wk).detach() if self.records else None
        out = torch.bmm(v, attn.to(v.dtype).transpose(1, 2))  # (B, cv, N)
        out = out.reshape(b, -1, hgt, wid)
        if self.o is not None:
            out = self.o(out)
        return out


class ChannelSelfAttention(nn.Module):
    """Channel self-attention (DANet's CAM core): X[i, j] = softmax_j(A_i · A_j) over channels; out = X A.

    Follows the papers' formula (affinity, not DANet code's ``max - affinity`` variant). Parameter-free,
    so the channel branch adds no weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        a = x.reshape(b, c, -1)
        energy = torch.bmm(a, a.transpose(1, 2))  # (B, C, C)
        attn = energy.float().softmax(dim=-1).to(a.dtype)
        return torch.bmm(attn, a).reshape(b, c, hgt, wid)


class PositionAttentionModule(nn.Module):
    """DANet PAM: E = α · PositionSelfAttention(A) + A, Q/K at C/``reduction``, V at C, α from 0."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.attn = PositionSelfAttention(channels, max(1, channels // reduction), channels)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha.to(x.dtype) * self.attn(x) + x

    @property
    def last_received(self) -> Optional[torch.Tensor]:
        return self.attn.last_received


class ChannelAttentionModule(nn.Module):
    """DANet CAM: E = β · ChannelSelfAttention(A) + A, β from 0."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = ChannelSelfAttention()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta.to(x.dtype) * self.attn(x) + x


class CSBlock(nn.Module):
    """CS-ConvNeXt's attention block: spatial (SAGAN) and channel self-attention in parallel on the same
    input, summed, added through a learnable scale γ that starts at 0, so an ImageNet backbone is
    undisturbed when fine-tuning begins. Keeps the channel count.

    Spatial branch: f, g at C/``qk_reduction``, h at C/``v_reduction`` (SAGAN's C/2), 1×1 conv back to C.
    """

    def __init__(self, channels: int, qk_reduction: int = 8, v_reduction: int = 2, kv_pool: int = 1) -> None:
        super().__init__()
        self.spatial = PositionSelfAttention(
            channels, max(1, channels // qk_reduction), max(1, channels // v_reduction), channels,
            kv_pool=kv_pool,
        )
        self.channel = ChannelSelfAttention()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma.to(x.dtype) * (self.spatial(x) + self.channel(x))

    @property
    def last_received(self) -> Optional[torch.Tensor]:
        return self.spatial.last_received
