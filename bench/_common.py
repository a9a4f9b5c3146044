"""Shared helpers for the benchmarks: peak-memory measurement, machine line, table printing.

Peak RSS on CPU: torch's CPU allocator hands large blocks straight to the OS (mmap), so the
kernel's high-water mark VmHWM tracks tensors. `PeakRSS` resets it through /proc/self/clear_refs
("5") before a section and reads it after: an exact in-process peak, no polling. tracemalloc does
not see torch memory and is not used. On CUDA, torch.cuda.max_memory_allocated is reported.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


def fix_malloc_threshold() -> bool:
    """glibc raises its mmap threshold after large frees, so freed tensors can stay in the heap and
    hide from RSS; a fixed 64 KiB threshold makes RSS follow tensors (measured: estimate/peak 1.0x)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 65536))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


MALLOC_FIXED = fix_malloc_threshold()

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 1024 ** 3
MIB = 1024 ** 2


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    value = _status_kb("VmRSS")
    if value is None:
        import psutil

        value = psutil.Process().memory_info().rss
    return value


class PeakRSS:
    """with PeakRSS() as m: ...  -> m.peak (bytes, high-water mark inside the section), m.delta
    (peak minus the RSS at entry: what the section added at its worst)."""

    def __init__(self):
        self.start = self.peak = self.delta = 0
        self.exact = Path("/proc/self/clear_refs").exists()

    def __enter__(self):
        if self.exact:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.exact = False
        self.start = current_rss()
        return self

    def __exit__(self, *exc):
        peak = _status_kb("VmHWM") if self.exact else None
        self.peak = peak if peak is not None else current_rss()
        self.delta = self.peak - self.start
        return False


class CudaPeak:
    def __init__(self, device):
        self.device = torch.device(device)
        self.peak = self.delta = 0

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)
        self.delta = self.peak - self.start
        return False


def peak_meter(device):
    return CudaPeak(device) if torch.device(device).type == "cuda" else PeakRSS()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device="cpu"):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


class StepTimer:
    """Sampler callback that stamps each step's end (synchronised). Call start() right before sampling:
    only the steps count, not the DiT's move to the device before them or its offload after them."""

    def __init__(self, device):
        self.device = device
        self.start_time = 0.0
        self.marks: list[float] = []

    def start(self) -> None:
        sync(self.device)
        self.start_time = time.perf_counter()
        self.marks = []

    def __call__(self, state) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())

    @property
    def step_seconds(self) -> list[float]:
        edges = [self.start_time] + self.marks
        return [b - a for a, b in zip(edges, edges[1:])]

    @property
    def total(self) -> float:
        return self.marks[-1] - self.start_time if self.marks else 0.0


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine(device="cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        total = torch.cuda.get_device_properties(dev).total_memory / GIB
        what = f"{name} ({total:.0f} GiB)"
    else:
        what = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return (f"{what}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load_average()} (1/5/15 min)")


def command_line() -> str:
    return "nice -n 10 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)


def header(title: str, device="cpu") -> None:
    print(f"## {title}")
    print(f"command: {command_line()}")
    print(f"machine: {machine(device)}")


def mid_wan_transformer(num_layers: int):
    """The benchmarks' mid-size Wan DiT, seeded: d=512 (4 heads x 128), text_dim 256, ffn 2048, Wan2.1's norms."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128, in_channels=16,
                                 out_channels=16, text_dim=256, freq_dim=256, ffn_dim=2048, num_layers=num_layers,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()


def table(columns: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(v) for v in row) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)
