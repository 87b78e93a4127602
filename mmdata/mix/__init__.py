"""The ratio-aware mixture sampler: exact ratios, deterministic, resumable mid-epoch.

`loader(mixture)` -> MixLoader (a DataLoader with state_dict/load_state_dict); `MixDataset` is the
IterableDataset underneath. See docs/mixture.md. torch is imported only when these are used.
"""

from mmdata.mix.plan import MixDamaged, MixError, MixExhausted, Plan

__all__ = ["MixDamaged", "MixDataset", "MixError", "MixExhausted", "MixLoader", "Plan", "load_mixture", "loader"]


def __getattr__(name: str):
    if name in ("MixDataset", "MixLoader", "loader", "load_mixture"):
        from mmdata.mix import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
