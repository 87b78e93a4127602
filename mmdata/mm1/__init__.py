"""The bundled reference MM1 trainer, fed by the mixture sampler (docs/trainer.md).

`train.run(recipe)` trains and returns where the checkpoints, the log and the exported model are;
`MM1.from_pretrained(dir)` loads an exported model; `model.generate(sequences)` captions.
torch and transformers are imported only when these are used.
"""

__all__ = ["MM1", "ImageSpec", "TrainRecipe", "run"]


def __getattr__(name: str):
    if name in ("MM1", "ImageSpec"):
        from mmdata.mm1 import model

        return getattr(model, name)
    if name == "TrainRecipe":
        from mmdata.mm1.config import TrainRecipe

        return TrainRecipe
    if name == "run":
        from mmdata.mm1.train import run

        return run
    raise AttributeError(name)
