"""`make demo` runs every stage that exists, end to end, on the demo corpus."""

from pathlib import Path

import yaml

from mmdata.pipeline import STAGES

ROOT = Path(__file__).resolve().parent.parent


def test_demo_recipe_runs_every_stage_in_pipeline_order():
    recipe = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    assert recipe["stages"] == list(STAGES), "a stage that exists must join the demo, in pipeline order"
