"""Recipes: a bad file gets one clear line naming the file, the field path and what was expected."""

import subprocess
import sys

import pytest

from mmdata.config import ConfigError, Pipeline, load

GOOD = "name: t\nworkdir: /tmp/x\nengine:\n  n_workers: 3\ncheck: {}\n"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mmdata", *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("workdir: /tmp/x\nengine:\n  n_workers: two\n", "engine.n_workers: Input should be a valid integer"),
        ("workdir: /tmp/x\nengine:\n  n_wrokers: 2\n", "engine.n_wrokers: unknown key"),
        ("workdir: /tmp/x\ncheck:\n  inptu: a\n", "check.inptu: unknown key"),
        ("name: t\n", "workdir: required field is missing"),
        ("workdir: [unclosed\n", "invalid YAML at line"),
        ("- a list\n", "expected a mapping at the top level"),
    ],
)
def test_bad_recipe_is_one_clear_line(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_missing_file(tmp_path):
    result = cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such recipe file"


def test_missing_section_is_clear(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: nocheck\nworkdir: /tmp/x\n")
    result = cli("check", "--config", str(path))
    assert result.returncode == 2
    assert "recipe 'nocheck' has no 'check' section" in result.stderr


def test_defaults_overrides_and_env(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("workdir: ${MMDATA_TEST_ROOT}/w\ncheck:\n  input: ${MMDATA_TEST_MISSING:-/default/in}\n")
    monkeypatch.setenv("MMDATA_TEST_ROOT", "/data")
    pipe = load(path, Pipeline, ["engine.n_workers=4", "engine.scheduler=tcp://10.0.0.1:8786"])
    assert pipe.workdir == "/data/w"
    assert pipe.check.input == "/default/in"
    assert pipe.engine.n_workers == 4 and pipe.engine.scheduler == "tcp://10.0.0.1:8786"
    assert pipe.engine.retries == 2  # default kept
    assert pipe.stage_dir("check") == "/data/w/check"
    monkeypatch.delenv("MMDATA_TEST_ROOT")
    with pytest.raises(ConfigError, match="MMDATA_TEST_ROOT is not set"):
        load(path)


def test_every_shipped_recipe_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "pipelines"
    env = {"MMDATA_DEMO_PORT": "1", "MMDATA_DEMO_CORPUS": "/c", "MMDATA_WORKDIR": "/w"}
    import os

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from mmdata.eval.ablate import AblateConfig
        from mmdata.eval.harness import EvalConfig
        from mmdata.mm1.config import TrainRecipe

        recipes = sorted(root.glob("*.yaml"))
        assert recipes
        # pipeline recipes, and the evaluation, ablation and training recipes by their name
        kinds = {"eval-": EvalConfig, "ablate": AblateConfig, "mm1-": TrainRecipe}
        for path in recipes:
            load(path, next((m for prefix, m in kinds.items() if path.name.startswith(prefix)), Pipeline))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_config_command_prints_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    result = cli("config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "n_workers: 3" in result.stdout and "retries: 2" in result.stdout


def test_stage_outputs_follow_the_recipe():
    pipe = Pipeline.model_validate({"workdir": "/w", "download": {"input": "u.parquet", "output": "s3://b/dl"}, "check": {}})
    assert pipe.output("download") == "s3://b/dl"  # every reader of download's shards goes there
    assert pipe.output("check") == "/w/check" and pipe.output("filter") == "/w/filter"


def test_missing_upstream_shards_is_one_clear_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"workdir: {tmp_path}\nfilter: {{}}\ncheck: {{}}\n")
    for stage in ("filter", "check"):
        result = cli(stage, "--config", str(path))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == (f"error: {stage}: no finished shards under {tmp_path}/download "
                                         f"(run the stage that writes them first, or point {stage}.input elsewhere)")


def test_failed_shard_exits_1_and_names_it(tmp_path):
    """The CLI's exit code and report survive its fast exit (no interpreter teardown)."""
    bad = tmp_path / "set"
    bad.mkdir()
    (bad / "00000.tar").write_bytes(b"garbage")
    (bad / "00000.parquet").write_bytes(b"garbage")
    (bad / "00000_stats.json").write_text('{"count": 1, "successes": 1, "status_dict": {"success": 1}}')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nworkdir: {tmp_path / 'w'}\nengine: {{n_workers: 1, retries: 0, progress: false}}\n"
                      f"check: {{input: {bad}}}\n")
    result = cli("check", "--config", str(recipe))
    assert result.returncode == 1
    assert "0 shards done, 0 already done, 1 failed" in result.stderr
    assert "shard 00000 FAILED: ArrowInvalid" in result.stderr
