"""Per-step training logs: a JSON-lines file, a progress bar, TensorBoard when installed; MFU.

MFU = model FLOPs per step / (step time x devices x the device's dense bf16 peak). Model FLOPs
count 6 N per token for trained parameters (forward + backward) and 2 N for frozen ones (forward
only), per part and over the tokens that part processes: the decoder over the sequence tokens
(text and image placeholders, not padding), the encoder and the connector over image patches.
Attention's own FLOPs are left out, as in the usual 6 N count.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# dense bf16 tensor-core peaks (TFLOP/s); the sparse figures are twice these
PEAKS = (
    ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)


def device_peak(device: str, override: float | None = None) -> float | None:
    """FLOP/s of one device, from `override` (TFLOP/s) or the table by CUDA device name; None on CPU."""
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device)).upper()
    return next((tf * 1e12 for key, tf in PEAKS if key in name), None)


@dataclass
class FlopCounter:
    """Parameters per part: {part: {"trainable": n, "frozen": n}} and tokens per image."""

    counts: dict[str, dict[str, int]]
    patches: int  # encoder tokens per image (class token included where there is one)

    def per_token(self, part: str) -> int:
        c = self.counts[part]
        return 6 * c["trainable"] + 2 * c["frozen"]

    def step(self, tokens: int, images: int) -> float:
        return (self.per_token("decoder") * tokens
                + (self.per_token("encoder") + self.per_token("connector")) * images * self.patches)


class StepLog:
    """Rank 0's per-step records: JSON lines at `path`, optional TensorBoard and a tqdm bar."""

    def __init__(self, path: str, total: int, start: int, *, progress: bool, tensorboard: bool):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._trim(start)
        self.file = open(path, "a")  # noqa: SIM115 (closed in close())
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(os.path.dirname(path), "tensorboard"), purge_step=start + 1)
            except ImportError:  # tensorboard not installed: the JSON lines are the log
                self.tb = None

    def _trim(self, start: int) -> None:
        """A resumed run restarts after its checkpoint: records past it (written before a crash) go."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= start]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, step)
            for k, v in record.get("lr", {}).items():
                self.tb.add_scalar(f"lr/{k}", v, step)
        if self.bar is not None:
            self.bar.update(1)
            shown = {"loss": f"{record['loss']:.3f}", "tok/s": f"{record['tokens_per_s']:.0f}",
                     "wait": f"{100 * record['data_share']:.0f}%"}
            if record.get("mfu") is not None:
                shown["mfu"] = f"{100 * record['mfu']:.1f}%"
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_log(path: str) -> list[dict]:
    """The records of a log.jsonl (local or fsspec URL)."""
    import fsspec

    with fsspec.open(path, "r") as f:
        return [json.loads(line) for line in f if line.strip()]
