"""NDC layer (eq. 7): speed and saved-for-backward memory, plain autograd vs. memory-lean vs. dense conv.

Runs side by side, in one process with 2 intra-op threads, at the same input shape (batch 1):

    (a)  NonnegativeDeconvolution(lean=False): the plain autograd graph of ndc_update
    (a') the same with a channels-last input (context: how much of the gap is memory layout)
    (b)  NonnegativeDeconvolution(lean=True): ndc_update_lean, hand-written backward, on
         its torch path (NNUNET_DECONVER_NDC_KERNEL=torch)
    (b') the same on the fused C++ CPU kernel (NNUNET_DECONVER_NDC_KERNEL=cpp, the default on CPU)
    (c)  a dense nn.Conv3d / nn.Conv2d(C, C, 3, padding=1); for a 5x5 NDC also (c') the dense 5x5

Timings are the median of ``--repeats`` runs after one warm-up: "fwd" is the training forward
(autograd on, graph built), "fwd+bwd" adds the backward of a fixed random output gradient w.r.t.
the input and all parameters. "saved" is the storage saved for backward (saved_tensors_hooks,
each storage counted once, the layer input excluded), also in units of U = numel(input).

    python benchmarks/ndc_speed_memory.py                 # full shapes (about 3 minutes on 2 cores)
    python benchmarks/ndc_speed_memory.py --quick         # small shapes (about 15 seconds)
    python benchmarks/ndc_speed_memory.py --output docs/ndc_table.md
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nnunet_deconver.analysis.memory import saved_tensor_bytes
from nnunet_deconver.layers import NonnegativeDeconvolution, ndc_cpu_kernel

THREADS = 2


@dataclass(frozen=True)
class Case:
    """One benchmark shape: C channels, spatial size, NDC kernel and source ratio R."""

    channels: int
    spatial: tuple[int, ...]
    kernel: int
    ratio: int

    @property
    def label(self) -> str:
        size = "x".join(map(str, self.spatial))
        return f"{len(self.spatial)}D C={self.channels} {size} k{self.kernel} R{self.ratio}"


FULL_CASES = [Case(64, (64, 64, 64), 3, 4), Case(32, (256, 256), 5, 4)]
QUICK_CASES = [Case(16, (32, 32, 32), 3, 4), Case(16, (96, 96), 5, 4)]


@dataclass
class Result:
    variant: str
    forward_s: float
    forward_backward_s: float
    saved_bytes: int
    output: Tensor | None = None


def _saved_bytes(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    """Bytes of the distinct storages autograd saves in ``module(x)``, without x's own storage."""
    outputs: list[Tensor] = []
    saved = saved_tensor_bytes(lambda: outputs.append(module(x)), exclude=[x])
    return saved, outputs[0].detach()


def _median_time(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up: oneDNN primitive creation, allocator
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(variant: str, module: nn.Module, x: Tensor, repeats: int, ndc_kernel: str = "auto") -> Result:
    """Time ``module`` with NNUNET_DECONVER_NDC_KERNEL=``ndc_kernel`` (torch path or C++ kernel)."""
    os.environ[ndc_cpu_kernel.ENVIRONMENT_VARIABLE] = ndc_kernel
    saved, output = _saved_bytes(module, x)
    # The same random output gradient for every variant, in the output's own memory layout (as the
    # next layer would pass it back).
    grad = torch.empty_like(output).copy_(torch.randn(output.shape, generator=torch.Generator().manual_seed(1)))

    def forward() -> None:
        module(x)

    def forward_backward() -> None:
        out = module(x)
        out.backward(grad)
        module.zero_grad(set_to_none=True)
        x.grad = None

    forward_s = _median_time(forward, repeats)
    forward_backward_s = _median_time(forward_backward, repeats)
    print(f"  {variant}: fwd {forward_s * 1e3:.0f} ms, fwd+bwd {forward_backward_s * 1e3:.0f} ms", flush=True)
    return Result(variant, forward_s, forward_backward_s, saved, output)


def run_case(case: Case, repeats: int) -> list[Result]:
    """Measure all variants at one shape; returns them in table order."""
    dims = len(case.spatial)
    torch.manual_seed(0)
    plain = NonnegativeDeconvolution(case.channels, dims, case.kernel, case.ratio, lean=False)
    lean = NonnegativeDeconvolution(case.channels, dims, case.kernel, case.ratio, lean=True)
    lean.load_state_dict(plain.state_dict())
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    x = torch.rand(1, case.channels, *case.spatial, requires_grad=True)  # nonnegative, as NDC requires
    x_channels_last = x.detach().contiguous(memory_format=torch.channels_last_3d if dims == 3 else torch.channels_last)
    x_channels_last.requires_grad_()

    print(f"{case.label}:", flush=True)
    results = [
        _measure("(a) plain autograd NDC", plain, x, repeats),
        _measure("(a') plain autograd NDC, channels-last input", plain, x_channels_last, repeats),
        _measure("(b) lean NDC (ndc_update_lean), torch path", lean, x, repeats, ndc_kernel="torch"),
        _measure("(b') lean NDC, fused C++ CPU kernel", lean, x, repeats, ndc_kernel="cpp"),
        _measure(f"(c) dense {conv.__name__}(C, C, 3)", conv(case.channels, case.channels, 3, padding=1), x, repeats),
    ]
    if case.kernel != 3:
        dense_same_kernel = conv(case.channels, case.channels, case.kernel, padding=case.kernel // 2)
        results.append(_measure(f"(c') dense {conv.__name__}(C, C, {case.kernel})", dense_same_kernel, x, repeats))
    plain_out = results[0].output
    assert plain_out is not None
    for lean_result in results[2:4]:
        assert lean_result.output is not None
        error = float((lean_result.output - plain_out).abs().max() / plain_out.abs().max())
        print(f"  {lean_result.variant}: max |lean - plain| / max |plain| = {error:.1e}", flush=True)
    return results


def markdown_table(tables: list[tuple[Case, list[Result]]]) -> str:
    lines = [
        "| shape | variant | fwd [ms] | fwd+bwd [ms] | saved [MiB] | saved / U | fwd+bwd / dense | fwd+bwd / plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, results in tables:
        unit_bytes = case.channels * torch.Size(case.spatial).numel() * 4  # U in float32 bytes
        plain, dense = results[0], results[4]
        for result in results:
            lines.append(
                f"| {case.label} | {result.variant} | {result.forward_s * 1e3:.0f} | "
                f"{result.forward_backward_s * 1e3:.0f} | {result.saved_bytes / 2**20:.1f} | "
                f"{result.saved_bytes / unit_bytes:.2f} | "
                f"{result.forward_backward_s / dense.forward_backward_s:.2f} | "
                f"{result.forward_backward_s / plain.forward_backward_s:.3f} |"
            )
    return "\n".join(lines)


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu} "
        f"({os.cpu_count()} logical CPUs), THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, finishes in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--output", help="also write the markdown table to this file")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    if ndc_cpu_kernel.extension() is None:
        raise SystemExit("the NDC C++ CPU kernel does not build here")
    print(f"NDC C++ kernel ready in {time.perf_counter() - start:.1f} s (compiled on first use, then cached)")
    tables = [(case, run_case(case, args.repeats)) for case in (QUICK_CASES if args.quick else FULL_CASES)]
    report = f"{markdown_table(tables)}\n\n{environment()}, median of {args.repeats} runs after 1 warm-up\n"
    print("\n" + report)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
