"""The tiny MM1 of the demo and the tests (`pipelines/mm1-tiny.yaml`), pointed at any training shards.

    from mmdata.mm1 import tiny, train, MM1
    result = train.run(tiny.recipe("work/demo/shards", "work/mm1-x", ["train.steps=200"]))
    model = MM1.from_pretrained(result.model)
    model.generate([[image, "Output:"]])

Ablations pass their own overrides (connector type and tokens, `mixture_overrides` weights,
`decode.image_size`, ...): the same recipe, varied in YAML terms.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmdata.mm1.config import TrainRecipe
from mmdata.mm1.train import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "mm1-tiny.yaml"
STREAMS = ("captions", "interleaved", "text")


def recipe(shards: str | os.PathLike, out: str | os.PathLike, overrides: list[str] = (),
           mixture_overrides: list[str] = ()) -> TrainRecipe:
    """pipelines/mm1-tiny.yaml writing to `out`, its mixture reading `shards` (the `shards` stage's
    output: captions/, interleaved/, text/ with a manifest.json each)."""
    r = load_recipe(RECIPE, [f"out={out}", *overrides])
    mixture = r.mixture
    if isinstance(mixture, str) and not os.path.isabs(mixture) and not os.path.exists(mixture):
        mixture = str(RECIPE.parents[1] / mixture)  # the repository's pipelines/, whatever the working directory
    where = [f"sources.{s}.shards={shards}/{s}/manifest.json" for s in STREAMS]
    return r.model_copy(update={"mixture": mixture,
                               "mixture_overrides": [*r.mixture_overrides, *where, *mixture_overrides]})
