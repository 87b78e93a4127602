"""Where a model runs and in which precision: cuda -> mps -> cpu, bf16/fp16 on accelerators.

`pick_device("auto")` takes the best accelerator present; naming one that is absent is an error
(a recipe that asks for a GPU should not silently crawl on CPU). `pick_dtype` chooses bf16 on
GPUs that have it (same range as fp32, so no overflow in long ViT-L activations), else fp16;
fp32 on CPU, where half precision is slower, not faster.
"""

from __future__ import annotations

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "float32", "float16", "bfloat16")


class DeviceError(RuntimeError):
    """An asked-for device or dtype that this machine cannot provide."""


def _mps_ok(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(want: str = "auto") -> str:
    import torch

    if want not in DEVICES and not want.startswith("cuda:"):
        raise DeviceError(f"unknown device {want!r}; expected one of {', '.join(DEVICES)} or cuda:N")
    if want == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_ok(torch) else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {want!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    if want == "mps" and not _mps_ok(torch):
        raise DeviceError("device 'mps' asked for, but this torch has no usable MPS backend")
    return want


def pick_dtype(device: str, want: str = "auto"):
    import torch

    if want not in DTYPES:
        raise DeviceError(f"unknown dtype {want!r}; expected one of {', '.join(DTYPES)}")
    if want != "auto":
        dtype = getattr(torch, want)
        if device == "cpu" and dtype == torch.float16:
            raise DeviceError("float16 on CPU is unsupported for these models; use float32 or bfloat16")
        return dtype
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def is_oom(exc: BaseException) -> bool:
    """Out of accelerator memory (CUDA's own class, or the RuntimeError MPS and older torch raise)."""
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cache(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def rotated(visible: list[str], index: int) -> list[str]:
    """The device list a worker sees: its own GPU first (dask-cuda's layout, so device 0 is its GPU
    and peer-to-peer numbering still covers every GPU)."""
    if not visible:
        return []
    i = index % len(visible)
    return visible[i:] + visible[:i]


_pinned: list[str | None] = []  # once per process: a second call must not rotate again


def visible_gpus() -> list[str]:
    """The NVIDIA devices this process may use, without starting CUDA (which would freeze
    CUDA_VISIBLE_DEVICES) or importing torch: the variable itself, else the driver's device list."""
    import os

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    root = "/proc/driver/nvidia/gpus"
    return [str(i) for i in range(len(os.listdir(root)))] if os.path.isdir(root) else []


def pin_worker_gpu() -> str | None:
    """One Dask worker per GPU: worker `i` of a LocalCluster (workers named 0..n-1) takes GPU
    `i mod n` by setting CUDA_VISIBLE_DEVICES before CUDA starts in this process, as dask-cuda does
    (the engine calls this before a worker's first stage set-up). Returns the pinned device, or None
    when there is nothing to pin: no GPU, not a Dask worker, a worker name that is not an index
    (external workers: start one per GPU with its own CUDA_VISIBLE_DEVICES, e.g. `dask-cuda-worker`),
    or a worker that already sees a single GPU. Idempotent."""
    import os
    import sys

    if _pinned:
        return _pinned[0]
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    if not isinstance(name, int) and not (isinstance(name, str) and name.isdigit()):
        return None
    visible = visible_gpus()
    if len(visible) <= 1:
        _pinned.append(None)
        return None
    mine = rotated(visible, int(name))
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # too late for the environment
        torch.cuda.set_device(int(name) % len(visible))
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    _pinned.append(mine[0])
    return mine[0]
