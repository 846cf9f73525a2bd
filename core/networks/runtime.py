"""Inference-only forms of DECA's networks: batch norms folded into the convolutions, channels_last.

Everything here computes the same function as the modules in `encoders`/`detail_decoder` (eval mode), up
to float rounding (tests/test_networks_runtime.py: 1e-4 relative against eager fp32). The eager modules
stay the reference; these copies are what the pipeline runs.

- :func:`fold_batch_norms` returns a copy of :class:`DecaNetworks` in which every ``Conv -> BatchNorm``
  pair (ResNet stem, bottlenecks, projections; ``D_detail``'s up-sampling blocks) is one convolution and the
  batch norm an ``Identity``, and ``D_detail``'s leading ``BatchNorm2d(128)`` is folded into ``l1``. In eval
  mode a batch norm is a per-channel affine map, so the fold is exact; it saves a full pass over every
  activation map (measured: ``D_detail`` spends ~15 % of its time in batch norm, channels_last, 2 threads).
- :class:`PersonDecoder` specialises ``D_detail`` to one detail code: ``l1`` is linear in its input, so the
  detail code's part of it is computed once and a sample only adds its ``[jaw, exp]`` columns. The wrinkle
  model decodes dozens of expressions of one person this way; on the CPU the large up-sampling blocks run
  a few samples at a time (`PERSON_CHUNK`: less memory traffic, same numbers).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .checkpoint import DecaNetworks
from .detail_decoder import (DETAIL_DECODER_INPUT, EXP_DIM, INIT_CHANNELS, INIT_SIZE, JAW_DIM, DetailDecoder)
from .encoders import DETAIL_CODE_DIM, ResnetEncoder
from .resnet import Bottleneck, ResNetTrunk

__all__ = ["fold_batch_norms", "fold_encoder", "fold_decoder", "folded_structure", "PersonDecoder",
           "inference_networks"]


def _fuse(conv: nn.Conv2d, bn: nn.Module, memory_format: torch.memory_format = torch.preserve_format,
          values: bool = True) -> nn.Conv2d:
    """``conv`` followed by ``bn`` as one convolution; ``bn`` already an Identity (folded before): ``conv``.

    ``conv`` itself gets the fused weight and bias, without the deep copy of each convolution that
    ``fuse_conv_bn_eval`` makes: callers fold a copy or a freshly loaded checkpoint already (measured: 0.4 s
    of a cold `Reconstructor()`). The arithmetic is torch's ``fuse_conv_bn_weights``, operation for operation
    (the same numbers, bit for bit: tests/test_networks_runtime.py), except that the fused weight is written
    straight into a tensor of ``memory_format``: `inference_networks` wants channels_last, and fusing into a
    contiguous tensor and then copying it to channels_last wrote every conv weight (~200 MB for the three
    networks) twice into fresh memory, one page fault per 4 kB (a cold `inference_networks` 0.40 -> 0.26 s,
    median of 6 interleaved fresh processes at load 2; the copies suffer most when the cores are busy)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return conv
    if not values:  # the folded form's structure only (`folded_structure`): a bias to load into, no arithmetic
        if conv.bias is None:
            # requires_grad as the fold's zero bias (torch's fuse_conv_bn_weights: a new zeros tensor) has it
            conv.bias = nn.Parameter(torch.empty(conv.out_channels, device=conv.weight.device,
                                                 dtype=conv.weight.dtype), requires_grad=False)
        return conv
    with torch.no_grad():
        running_mean, running_var = bn.running_mean, bn.running_var
        bn_w = bn.weight if bn.weight is not None else torch.ones_like(running_mean)
        bn_b = bn.bias if bn.bias is not None else torch.zeros_like(running_mean)
        conv_b = conv.bias if conv.bias is not None else torch.zeros_like(running_mean)
        rsqrt = torch.rsqrt(running_var + bn.eps)
        shape = [-1, 1] + [1] * (conv.weight.dim() - 2)
        factor = (bn_w * rsqrt).reshape(shape)
        if torch.result_type(conv.weight, factor) == conv.weight.dtype:
            w = torch.empty_like(conv.weight, memory_format=memory_format)
            torch.mul(conv.weight, factor, out=w)
        else:  # e.g. a half-precision conv with float32 batch norms: computed in float32, then rounded
            w = (conv.weight * factor).to(conv.weight.dtype).contiguous(memory_format=memory_format)
        b = ((conv_b - running_mean) * rsqrt * bn_w + bn_b).to(
            conv.bias.dtype if conv.bias is not None else conv.weight.dtype)
    conv.weight = nn.Parameter(w, conv.weight.requires_grad)
    conv.bias = nn.Parameter(b, conv_b.requires_grad)
    return conv


def _fold_trunk(trunk: ResNetTrunk, fmt: torch.memory_format, values: bool = True) -> None:
    trunk.conv1 = _fuse(trunk.conv1, trunk.bn1, fmt, values)
    trunk.bn1 = nn.Identity()
    for block in trunk.modules():
        if isinstance(block, Bottleneck):
            for i in (1, 2, 3):
                setattr(block, f"conv{i}", _fuse(getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), fmt, values))
                setattr(block, f"bn{i}", nn.Identity())
            if block.downsample is not None and len(block.downsample) == 2:
                block.downsample = nn.Sequential(_fuse(block.downsample[0], block.downsample[1], fmt, values))


def fold_encoder(encoder: ResnetEncoder, inplace: bool = False,
                 memory_format: torch.memory_format = torch.preserve_format) -> ResnetEncoder:
    """``E_flame`` or ``E_detail`` (eval) with the trunk's batch norms folded: a copy, or ``encoder`` itself
    with ``inplace``. Same input and output. The fused convolution weights are in ``memory_format``."""
    enc = (encoder if inplace else copy.deepcopy(encoder)).eval()
    _fold_trunk(enc.encoder, memory_format)
    return enc


def fold_decoder(decoder: DetailDecoder, inplace: bool = False,
                 memory_format: torch.memory_format = torch.preserve_format) -> DetailDecoder:
    """``D_detail`` (eval) with every batch norm folded away: a copy, or ``decoder`` itself with
    ``inplace``. Same input and output. Folding a folded decoder changes nothing. The fused convolution
    weights are in ``memory_format``."""
    return _fold_decoder((decoder if inplace else copy.deepcopy(decoder)).eval(), memory_format)


def _fold_decoder(dec: DetailDecoder, memory_format: torch.memory_format, values: bool = True) -> DetailDecoder:
    blocks = list(dec.conv_blocks)
    bn0 = blocks[0]
    if isinstance(bn0, nn.Identity):
        return dec
    if not isinstance(bn0, nn.BatchNorm2d):
        raise TypeError(f"D_detail.conv_blocks must start with its BatchNorm2d, found {type(bn0).__name__}")
    if values:
        with torch.no_grad():
            # l1's output is viewed as (128, 8, 8): row r belongs to channel r // 64.
            scale = bn0.weight / torch.sqrt(bn0.running_var + bn0.eps)
            shift = bn0.bias - bn0.running_mean * scale
            per_row = INIT_SIZE * INIT_SIZE
            lin = dec.l1[0]
            # new tensors rather than in place: a freshly loaded checkpoint's are views of its memory-mapped
            # file, which `inference_networks` would otherwise copy once more (same numbers either way)
            lin.weight = nn.Parameter(lin.weight * scale.repeat_interleave(per_row)[:, None],
                                      lin.weight.requires_grad)
            lin.bias = nn.Parameter(lin.bias * scale.repeat_interleave(per_row) + shift.repeat_interleave(per_row),
                                    lin.bias.requires_grad)
    out: list[nn.Module] = [nn.Identity()]
    i = 1
    while i < len(blocks):
        m = blocks[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(blocks) and isinstance(blocks[i + 1], nn.BatchNorm2d):
            out += [_fuse(m, blocks[i + 1], memory_format, values), nn.Identity()]  # keep the state-dict indices
            i += 2
        else:
            out.append(m)
            i += 1
    dec.conv_blocks = nn.Sequential(*out)
    return dec


def fold_batch_norms(nets: DecaNetworks, inplace: bool = False,
                     memory_format: torch.memory_format = torch.preserve_format) -> DecaNetworks:
    """``nets`` (eval mode) with every batch norm folded into the layer before it (idempotent): a copy, or
    ``nets`` itself with ``inplace`` (no copy of the weights: what a freshly loaded checkpoint wants). The
    fused convolution weights are in ``memory_format`` (the others keep theirs)."""
    folded = nets if inplace else copy.deepcopy(nets)
    for name in ("E_flame", "E_detail"):
        fold_encoder(getattr(folded, name), inplace=True, memory_format=memory_format)
    fold_decoder(folded.D_detail, inplace=True, memory_format=memory_format)
    return folded.eval()


def folded_structure(nets: DecaNetworks) -> DecaNetworks:
    """``nets`` (built on the meta device, nothing loaded) turned in place into the module structure that
    `fold_batch_norms` produces, without computing anything: batch norms replaced as the fold replaces them,
    each fused convolution given its (empty) bias. A folded state dict (`core.networks.cache`) is then
    loaded into it with ``load_state_dict(strict=True, assign=True)``; arithmetic on meta tensors would go
    through torch's Python decompositions (seconds on a cold start)."""
    for name in ("E_flame", "E_detail"):
        _fold_trunk(getattr(nets, name).encoder, torch.preserve_format, values=False)
    _fold_decoder(nets.D_detail, torch.preserve_format, values=False)
    return nets.eval()


def inference_networks(nets: DecaNetworks, device: torch.device | str = "cpu", inplace: bool = False
                       ) -> DecaNetworks:
    """What the pipeline runs: folded batch norms, on ``device``, channels_last on the CPU (oneDNN's
    preferred layout); ``nets`` is left as it was unless ``inplace``. Still eager PyTorch: no compilation.
    Measured against the eager reference in benchmarks/bench_targets.py."""
    device = torch.device(device)
    nets = nets.to(device)
    loaded = {t.data_ptr() for t in list(nets.parameters()) + list(nets.buffers())} if inplace else set()
    # the fused weights are written in channels_last directly (one new tensor each); ``.to`` then converts
    # what the fold did not write (D_detail's last convolution) and leaves the rest as it is
    fmt = torch.channels_last if device.type == "cpu" else torch.preserve_format
    out = fold_batch_norms(nets.eval(), inplace=inplace, memory_format=fmt)
    if device.type == "cpu":
        out = out.to(memory_format=torch.channels_last)
    if inplace:
        # Tensors the fold and the layout change did not replace (the linear layers) may still be views of
        # the memory-mapped checkpoint, which keeps the whole file mapped and counted in the resident set:
        # own them, so that the mapping goes away (about 0.1 GB less peak memory per process).
        with torch.no_grad():
            for t in list(out.parameters()) + list(out.buffers()):
                if t.data_ptr() in loaded:  # not replaced by the fold or the layout change
                    t.data = t.data.clone()
    return out


#: `PersonDecoder` on the CPU: the up-sampling blocks from this one on (64x64 and larger maps) run
#: `PERSON_CHUNK` samples at a time. A batch's activations there are ~12 MB per sample (the 256x256x32
#: up-sampled map and its 16-channel convolution); 12 samples at once stream ~150 MB through memory per
#: layer, 2 stay near the 32 MB L3 cache. Measured (12 decodes, 2 threads, this project's AMD EPYC, load 3-5,
#: median of 6-10 interleaved repeats, ratio to one batch of 12): chunks of 1 0.83-0.86, 2 0.75-0.77,
#: 3 0.73, 4 0.84-0.87, 6 0.84; the first two blocks (8x8 -> 32x32, cheap, and slower per sample alone)
#: at full batch and chunks of 2 from the third 0.71-0.74 (chunks of 1 from the third 0.75); in four further
#: runs (load 4.6-6.6) 0.71, 0.76, 0.99 and 1.00: never slower. Tried and dropped, no gain end to end: each
#: convolution fused with its activation (``torch.ops.mkldnn._convolution_pointwise``, 0.68 of the last
#: conv + leaky ReLU alone, but 0.97-1.12 of the whole 12 decodes); the last 16 -> 1 convolution as one
#: matmul to 9 taps and shifted sums (0.75 of that convolution, ~10 % of a decode: within the noise here);
#: bilinear up-sampling + convolution as four phase convolutions on the small map (0.74 of the pair for the
#: 256x256 block without the pixel shuffle, 0.86 with it, before the border rows that zero padding changes).
PERSON_CHUNK_FROM_UPSAMPLE = 3
PERSON_CHUNK = 2


class PersonDecoder(nn.Module):
    """``D_detail`` for one detail code: ``[jaw (n,3), exp (n,50)] -> (n, 1, 256, 256)``.

    Args:
        decoder: a ``DetailDecoder`` (folded or not, eval mode).
        detail: (1, 128) or (128,) detail code.
        chunk: on the CPU, samples per pass through the large blocks (`PERSON_CHUNK`; 0: the whole batch).
            The same function either way (each sample's arithmetic is its own), only the memory traffic differs.
    """

    def __init__(self, decoder: DetailDecoder, detail: torch.Tensor, chunk: int = PERSON_CHUNK) -> None:
        super().__init__()
        lin = decoder.l1[0]
        detail = detail.reshape(1, DETAIL_CODE_DIM).to(lin.weight)
        n_expr = JAW_DIM + EXP_DIM
        if lin.weight.shape[1] != DETAIL_DECODER_INPUT:
            raise ValueError(f"expected D_detail's l1 to take {DETAIL_DECODER_INPUT} inputs")
        with torch.no_grad():
            self.register_buffer("w_expr", lin.weight[:, :n_expr].clone())  # (8192, 53)
            self.register_buffer("const", (detail @ lin.weight[:, n_expr:].T + lin.bias)[0].clone())  # (8192,)
        self.conv_blocks = decoder.conv_blocks
        self.out_scale = decoder.out_scale
        self.chunk = int(chunk)
        ups = [i for i, m in enumerate(self.conv_blocks) if isinstance(m, nn.Upsample)]
        # where the chunked part starts: the PERSON_CHUNK_FROM_UPSAMPLE-th up-sampling (all of it if fewer)
        self._split = ups[PERSON_CHUNK_FROM_UPSAMPLE - 1] if len(ups) >= PERSON_CHUNK_FROM_UPSAMPLE else 0

    def forward(self, jaw: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        x = torch.cat([jaw, exp], dim=1).to(self.w_expr)
        h = torch.addmm(self.const, x, self.w_expr.T).view(x.shape[0], INIT_CHANNELS, INIT_SIZE, INIT_SIZE)
        if self.w_expr.device.type != "cpu" or self.chunk <= 0 or len(x) <= self.chunk:
            if self.w_expr.device.type == "cpu":
                h = h.contiguous(memory_format=torch.channels_last)
            return self.conv_blocks(h) * self.out_scale
        h = self.conv_blocks[:self._split](h.contiguous(memory_format=torch.channels_last))
        tail = self.conv_blocks[self._split:]
        return torch.cat([tail(h[i:i + self.chunk]) for i in range(0, len(h), self.chunk)]) * self.out_scale
