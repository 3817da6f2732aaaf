"""`model.channels_last` under both backends, and what the convolutions really computed in.

Under DDP the weights are converted (`model.to(memory_format=channels_last)`): with them
every convolution picks its NHWC kernels, even on a 1-channel frame, whose strides say
nothing (a (N, 1, H, W) tensor is both contiguous and channels_last, so converting the
input alone is a no-op there, and again after the Reg-STN's grid_sample).

DeepSpeed cannot hold channels_last weights: its start-up broadcast views each parameter
as bytes, which needs a unit last stride ("self.stride(-1) must be 1 to view Float as
Byte"), and ZeRO-1/2 and its bf16 optimizer re-point every parameter into one flat
contiguous buffer, which would drop the format anyway. There the weights stay in the
standard layout and each convolution is handed its input in channels_last: the kernel
runs NHWC (cuDNN and oneDNN pick it when input or weight is channels_last, reordering the
small weight per call), so its output, the next layer's input, stays channels_last.

`LayoutProbe` records the layout each convolution's first output came out in, so
summary.json states the format the run computed in, not the one it asked for.
"""
from __future__ import annotations

import torch

CONVS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def channels_last_input(module: torch.nn.Module, args: tuple):
    """Forward pre-hook: the convolution's input in channels_last (no copy when it is)."""
    x = args[0]
    if x.dim() != 4:
        return None
    return (x.to(memory_format=torch.channels_last), *args[1:])


def convs_take_channels_last(net: torch.nn.Module) -> int:
    """Give every 2-D convolution of `net` its input channels_last; the number hooked."""
    convs = [m for m in net.modules() if isinstance(m, CONVS)]
    for conv in convs:
        conv.register_forward_pre_hook(channels_last_input)
    return len(convs)


def layout_of(t: torch.Tensor) -> str | None:
    """"channels_last", "contiguous", or None when the strides fit both (C == 1, H = W = 1)
    or neither."""
    if t.dim() != 4:
        return None
    nhwc, nchw = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    if nhwc == nchw:
        return None
    return "channels_last" if nhwc else "contiguous"


def summarize(layouts: list[str | None]) -> str | None:
    """One word for the run: every telling output in one format, else the count."""
    told = [x for x in layouts if x is not None]
    if not told:
        return None
    last = told.count("channels_last")
    if last in (0, len(told)):
        return told[0]
    return f"mixed ({last} of {len(told)} convolutions channels_last)"


class LayoutProbe:
    """Forward hooks that note each convolution's first output layout, then remove
    themselves (no cost after the first forward)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.layouts: dict[int, str | None] = {}
        self.handles = {id(m): m.register_forward_hook(self.record)
                        for m in net.modules() if isinstance(m, CONVS)}

    def record(self, module: torch.nn.Module, args: tuple, out) -> None:
        if isinstance(out, torch.Tensor):
            self.layouts[id(module)] = layout_of(out)
        handle = self.handles.pop(id(module), None)
        if handle is not None:
            handle.remove()

    def result(self) -> str | None:
        """None when the net has no convolution or has not run yet."""
        return summarize(list(self.layouts.values()))


def planned_format(channels_last: bool, deepspeed: bool) -> str:
    """How a run will lay its tensors out (`lus doctor`)."""
    if not channels_last:
        return "contiguous (model.channels_last=false)"
    if deepspeed:
        return ("channels_last: DeepSpeed holds the weights contiguous, every convolution "
                "takes its input channels_last")
    return "channels_last: weights and inputs"
