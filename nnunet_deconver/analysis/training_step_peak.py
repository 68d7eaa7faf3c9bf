"""A real training step on a device: its peak memory and its time, as nnU-Net trains (fp16 autocast, SGD).

The fake-tensor estimates of :mod:`training_step_cost` need no device; these run the step for real on a
CUDA device (``torch.cuda.max_memory_allocated``, synchronised timings), eagerly or under ``torch.compile``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn


def _step(network: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, scaler: torch.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=x.device.type == "cuda"):
        output = network(x)
        outputs = output if isinstance(output, (list, tuple)) else [output]
        loss = sum(o.float().square().mean() / 2**level for level, o in enumerate(outputs))
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _prepared(build: Callable[[], nn.Module], input_shape: tuple[int, ...], device: torch.device, compiled: bool):
    if device.type != "cuda":
        raise ValueError(f"a measured step needs a CUDA device, got {device}; the fake-tensor estimates stand in on CPU")
    network = build().to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    x = torch.randn(input_shape, device=device)
    return (torch.compile(network) if compiled else network), optimizer, x, torch.GradScaler(device.type)


def measured_step_peak_bytes(build: Callable[[], nn.Module], input_shape: tuple[int, ...], device: torch.device) -> int:
    """Peak bytes allocated on ``device`` (CUDA) during the second of two eager training steps."""
    network, optimizer, x, scaler = _prepared(build, input_shape, device, compiled=False)
    _step(network, optimizer, x, scaler)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    _step(network, optimizer, x, scaler)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def measured_step(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...], device: torch.device, *, compiled: bool,
    repeats: int = 10,
) -> tuple[float, int, float]:
    """(median step seconds, peak bytes, seconds of the first step: compilation included) on a CUDA device."""
    network, optimizer, x, scaler = _prepared(build, input_shape, device, compiled)
    started = time.perf_counter()
    _step(network, optimizer, x, scaler)
    torch.cuda.synchronize(device)
    first = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        _step(network, optimizer, x, scaler)
        torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), torch.cuda.max_memory_allocated(device), first
