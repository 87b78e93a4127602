"""`make demo` runs every stage that exists, end to end, on the demo corpus."""

from pathlib import Path

import pytest
import yaml

from mmdata.pipeline import STAGES

ROOT = Path(__file__).resolve().parent.parent


def test_demo_recipe_runs_every_stage_in_pipeline_order():
    recipe = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    assert recipe["stages"] == list(STAGES), "a stage that exists must join the demo, in pipeline order"


@pytest.mark.timeout(1800)  # the session's tiny MM1 trains first when no earlier test asked for it
def test_demo_evaluates_the_tiny_model_and_the_report_tabulates_it(mm1_tiny, demo_corpus, tmp_path, monkeypatch):
    """The demo's last step (`demo.run.evaluate_tiny`, what `make demo` calls after training) runs
    pipelines/eval-demo.yaml on the session's trained tiny MM1: every task at every shot count, on
    the demo's subset, into the workdir, where `mmdata report` shows it."""
    import json
    import subprocess
    import sys

    from mmdata.demo import run as demo_run

    monkeypatch.setenv("MMDATA_DEMO_CORPUS", str(demo_corpus))
    work = tmp_path / "work"
    said = []
    results = demo_run.evaluate_tiny(ROOT / "pipelines" / "eval-demo.yaml", mm1_tiny.model, str(work), echo=said.append)
    assert results == str(work / "eval" / "results.jsonl")
    lines = [json.loads(x) for x in Path(results).read_text().splitlines()]
    assert {(r["task"], r["shots"]) for r in lines} == {
        ("caption", 0), ("caption", 4), ("caption", 8), ("vqa", 0), ("vqa", 4), ("vqa", 8),
        ("icl", 4), ("icl", 8), ("text", 0)}
    assert all(r["n"] == demo_run.DEMO_EVAL_ITEMS for r in lines), lines
    by = {(r["task"], r["shots"]): r for r in lines}
    assert by[("icl", 4)]["chance"] == 50 and by[("text", 0)]["chance"] == 25
    # the model learnt to caption (tests/test_mm1_train.py): its 0-shot CIDEr is not nil
    assert by[("caption", 0)]["metric"].lower().startswith("cider") and by[("caption", 0)]["score"] > 0
    assert any(line.lstrip().startswith("icl") for line in said), said  # the table is printed too

    env = {**dict(__import__("os").environ), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mmdata", "report", str(work)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    html = (work / "report.html").read_text()
    section = html[html.index('<section id="evaluation" class="present"'):]
    section = section[: section.index("</section>")]
    assert section.count("<tr>") == len(lines) + 1  # the header and one row per (task, shots)
