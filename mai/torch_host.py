"""What torch sees of this machine: the device a run uses, and how to name the hardware.

One rule for `mai train cnn`, `mai train vlm`, `mai eval` and the VLM layer
(torch imported when called, never at import).
"""

from __future__ import annotations

import os
import platform

from mai.errors import MaiError

DEVICES = ("auto", "cuda", "cpu")


def torch_device(name: str) -> str:
    """`auto` is CUDA when torch sees a GPU, else the CPU; `cuda` without one is an error."""
    import torch

    if name not in DEVICES:
        raise MaiError(f"unknown device {name!r}; use auto, cuda or cpu")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MaiError("--device cuda: torch sees no CUDA device here; use --device cpu")
    return name


def hardware(device: str) -> str:
    """The GPU's name, or the CPU's (from /proc/cpuinfo on Linux) with core and thread counts."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:  # Linux leaves platform.processor() empty; /proc/cpuinfo names the chip
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
