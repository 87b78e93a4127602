"""Evaluation: CIDEr-D and VQA accuracy, readers for COCO / Karpathy / VQAv2 files, the few-shot
protocol (OpenFlamingo's) and `make ablate`. See docs/eval.md.

`metrics` and `formats` import no torch; the few-shot harness does, when used.
"""
