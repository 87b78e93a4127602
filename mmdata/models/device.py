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
