"""Timing that is right on every device: CUDA kernels run asynchronously, so a clock read on the host
measures only their launch unless the device's queue is drained first."""
import os
import platform
import subprocess
import time

import torch


def synchronize(device):
    """Wait until every kernel queued on `device` has finished (nothing to wait for on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_clock(device, clock=time.perf_counter):
    """A clock for work on `device`: `clock()` read after the device's queue is drained, so that the time
    between two readings covers the kernels launched between them (torch.utils.benchmark's Timer does the
    same on CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return clock

    def read():
        torch.cuda.synchronize(device)
        return clock()
    return read


def describe_device(device):
    """One line naming `device`: the GPU, its driver and CUDA / cuDNN, or the CPU and its threads; and torch."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        where = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
                 f"{props.minor}), driver {cuda_driver()}, CUDA {torch.version.cuda}, cuDNN "
                 f"{torch.backends.cudnn.version()}")
    else:
        where = (f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
                 f"{torch.get_num_threads()} threads)")
    return f"{where}; torch {torch.__version__}"


def cuda_driver():
    """The NVIDIA driver's version as nvidia-smi reports it, or 'unknown' where it cannot be run."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    versions = result.stdout.split()
    return versions[0] if result.returncode == 0 and versions else "unknown"
