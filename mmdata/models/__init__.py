"""Models the stages run: device/dtype choice, the CLIP/SigLIP encoder, the tiny demo CLIP.

Everything here imports torch and transformers lazily (inside functions), so importing the package
costs nothing until a model is actually used.
"""
