"""`make ablate`'s table and verdicts (the runs themselves are the trainer's and the harness's)."""

from __future__ import annotations

import json

import pytest
from conftest import RANDOM_LM

from mmdata import config as cfgmod
from mmdata.eval import ablate as ab


def _runs(spec: dict[str, dict[str, list[float]]]) -> list[ab.Run]:
    out = []
    for row, cols in spec.items():
        n = len(next(iter(cols.values())))
        for s in range(n):
            out.append(ab.Run(row, s, f"runs/{row}/{s}", {k: v[s] for k, v in cols.items()}))
    return out


BASE = {"caption0": [40, 42, 41], "icl4": [70, 74, 72], "icl8": [80, 78, 82], "vqa": [30, 33, 31], "text": [60, 64, 62]}


def test_findings_reproduced_not_and_noise():
    table = ab.summary(_runs({
        "45:45:10": BASE,
        "captions only": {"caption0": [50, 52, 51], "icl4": [48, 53, 50], "icl8": [51, 47, 50], "vqa": [10, 12, 11], "text": [25, 24, 26]},
        "captions+interleaved": {"caption0": [40, 41, 39], "icl4": [72, 70, 71], "icl8": [79, 81, 80], "vqa": [30, 31, 29], "text": [26, 25, 27]},
        "no VeCap": {**BASE, "vqa": [29, 34, 31]},                      # within noise
        "32 px": {**BASE, "caption0": [30, 31, 29]},                    # lower: resolution matters
        "4 tokens": {**BASE, "caption0": [45, 46, 47]},                 # higher: the opposite of MM1
        "avg-pool": {**BASE, "caption0": [41, 40, 42]},
        "attention-pool": {**BASE, "caption0": [40, 43, 41]},
    }))
    got = {f.claim: f for f in ab.findings(table, "45:45:10", 50.0)}
    verdict = {k.split(" ")[0] + " " + k.split(" ")[1]: f.verdict for k, f in got.items()}
    assert verdict == {
        "Interleaved data": "reproduced", "Caption data": "reproduced", "Text-only data": "reproduced",
        "Synthetic (VeCap)": "not reproduced", "Image resolution": "reproduced", "Image-token count": "not reproduced",
        "The connector": "reproduced"}  # spread 0.3 against a token-count difference of 5
    assert "within the noise" in got["Synthetic (VeCap) captions help few-shot"].detail
    assert "opposite" in got["Image-token count matters"].detail
    icl = got["Interleaved data drives few-shot (in-context) learning"].detail
    assert "captions only 50.3" in icl and "interval holds chance" in icl and "above chance" in icl


def test_icl_finding_needs_chance_inside_and_outside():
    table = ab.summary(_runs({
        "45:45:10": BASE,
        "captions only": {"icl4": [60, 62, 61], "icl8": [60, 61, 59]},   # above chance without interleaved data
        "captions+interleaved": {"icl4": [70, 72, 71], "icl8": [79, 81, 80]},
    }))
    f = ab.findings(table, "45:45:10", 50.0)[0]
    assert f.verdict == "not reproduced" and "interval misses chance" in f.detail
    # without the captions+interleaved row, the baseline (45:45:10 has interleaved documents) stands in
    two = ab.findings(ab.summary(_runs({"45:45:10": BASE, "captions only": {"icl4": [48, 53, 50], "icl8": [51, 47, 50]}})),
                      "45:45:10", 50.0)[0]
    assert two.verdict == "reproduced" and "45:45:10 72.0" in two.detail, two.detail
    missing = ab.findings(ab.summary(_runs({"45:45:10": BASE})), "45:45:10", 50.0)
    assert {f.verdict for f in missing} == {"not run"}


def test_icl_counted_run_by_run():
    """A run counts when every in-context column's interval is above chance; captions-only runs apart."""
    def run(row: str, seed: int, lows: tuple[float, float]) -> ab.Run:
        return ab.Run(row, seed, "", results=[{"task": "icl", "shots": k, "ci95": [lo, lo + 20]}
                                              for k, lo in zip((4, 8), lows)] + [{"task": "vqa", "shots": 4, "ci95": [0, 1]}])

    runs = [run("captions only", 0, (40, 41)), run("captions only", 1, (51, 52)), run("45:45:10", 0, (69, 81)),
            run("45:45:10", 1, (49, 60)), run("avg-pool", 0, (71, 77))]
    said = ab.icl_by_run(runs, 50.0)
    assert said == ("in-context, run by run (4-shot and 8-shot intervals all above chance 50): "
                    "2 of 3 runs with interleaved documents; 1 of 2 captions-only runs")
    assert ab.icl_by_run([ab.Run("45:45:10", 0, "")], 50.0) is None  # no in-context results: nothing to say


def test_diff_interval():
    d, lo, hi = ab.diff_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert d == 0 and lo < 0 < hi
    d, lo, hi = ab.diff_ci([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert d == 9 and 0 < lo < 9 < hi


def test_markdown_and_plot():
    cfg = cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig)
    runs = _runs({r.name: BASE for r in cfg.rows})
    table = ab.summary(runs)
    md = ab.markdown(cfg, table, ab.findings(table, cfg.baseline, 50.0), runs, "make ablate", 50.0, ["a note"], 90.0)
    assert md.count("\n| ") == len(cfg.rows) + 1 and "## MM1's findings" in md and "- a note" in md
    assert "1.5 min wall" in md and f"{cfg.jobs} at a time" in md  # summed run time is not passed off as wall time
    assert "41.0 [38.5, 43.5]" in md  # mean and the t interval of 40, 42, 41
    svg = ab.svg(cfg, table, 50.0)
    assert svg.startswith("<svg") and svg.count("<rect") > len(cfg.rows) * len(ab.COLUMNS)


def test_recipe_is_checked():
    cfg = cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig)
    assert cfg.baseline in [r.name for r in cfg.rows] and len(cfg.seeds) >= 2
    with pytest.raises(cfgmod.ConfigError, match="seeds"):
        cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig, ["seeds=[0]"])


def test_every_row_of_the_recipe_loads(tmp_path):
    """Each row's overrides fit the trainer's recipe and the mixture as they are today (a row that names
    a field the tiny recipe no longer has would fail only minutes into `make ablate`)."""
    from mmdata.mm1.train import mixture_of

    cfg = cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig)
    for row in cfg.rows:
        recipe = ab.recipe_for(cfg, row, 0, str(tmp_path / ab.slug(row.name)))
        mix = mixture_of(recipe)
        assert recipe.out.endswith(ab.slug(row.name)) and mix.seed == 0, row.name
    small = next(r for r in cfg.rows if r.name == "32 px")
    assert mixture_of(ab.recipe_for(cfg, small, 0, str(tmp_path))).decode.image_size == 32


def test_runs_train_in_parallel_and_resume(tmp_path, monkeypatch, demo_shards, demo_corpus, tiny_vision):
    """`jobs: 2` trains two runs at once in spawned processes through the real trainer and harness;
    each run evaluates only the table's columns; a second call reads the runs back instead of training,
    unless a setting changed."""
    monkeypatch.setenv("MMDATA_SHARDS", str(demo_shards))
    monkeypatch.setenv("MMDATA_DEMO_CORPUS", str(demo_corpus))
    cfg = cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig, [f"out={tmp_path}", "jobs=2"])
    cfg = cfg.model_copy(update={
        "train_overrides": ["train.steps=3", "train.checkpoint_every=3", "data.seq_len=128", "data.num_workers=0",
                            f"model.encoder.model={tiny_vision}", *RANDOM_LM],
        "eval_overrides": ["max_items=4", "query_pool=16"]})
    rows = {r.name: r for r in cfg.rows}
    todo = [(rows["45:45:10"], 0), (rows["4 tokens"], 1)]
    runs = ab.run_all(cfg, todo, echo=lambda s: None)
    assert [(r.row, r.seed, r.steps) for r in runs] == [("45:45:10", 0, 3), ("4 tokens", 1, 3)]
    wanted = {(task, cfg.vqa_shots if k is None else k) for _, _, task, k in ab.COLUMNS}
    for run in runs:
        assert set(run.scores) == {key for key, *_ in ab.COLUMNS}
        assert {(r["task"], r["shots"]) for r in run.results} == wanted  # nothing the table does not show
        assert (tmp_path / "runs" / ab.slug(run.row) / f"seed{run.seed}" / "run.json").exists()
    assert [vars(r) for r in ab.run_all(cfg, todo, echo=lambda s: None)] == [vars(r) for r in runs]
    # a changed setting (here the evaluation's) is a new experiment: that run is made again, not read back
    said: list[str] = []
    changed = cfg.model_copy(update={"eval_overrides": ["max_items=3", "query_pool=16"]})
    again = ab.run_all(changed, todo[:1], echo=said.append)
    assert any("made with other settings; training it again" in s for s in said), said
    assert {r["n"] for r in again[0].results if r["task"] == "icl"} == {3}
    # a run killed mid-training under other settings (checkpoints, no run.json) is started over, not
    # handed to the trainer (which would refuse the folder)
    folder = tmp_path / "runs" / ab.slug(todo[0][0].name) / "seed0"
    (folder / "run.json").unlink()
    (folder / "settings.json").write_text('{"train": "another recipe"}')
    said.clear()
    ab.run_all(cfg, todo[:1], echo=said.append)
    assert any("holds an unfinished run with other settings; training it again" in s for s in said), said


def test_the_ablation_builds_its_own_tiny_models(tmp_path, monkeypatch):
    """`make ablate` trains tiny models on its own corpus: they must live under its workdir, never in
    `make demo`'s, whose later stages would then refuse the work they made with the demo's models."""
    monkeypatch.setenv("MMDATA_WORKDIR", "work/demo")  # what a shell may hold; restored after the test
    cfg = cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig, [f"data.workdir={tmp_path / 'data'}"])
    ab.own_workdir(cfg)
    own = str(tmp_path / "data")
    pipe = cfgmod.load(cfg.data.recipe, cfgmod.Pipeline, [f"workdir={cfg.data.workdir}"])
    assert pipe.section("clipscore").model == f"{own}/tiny-clip"
    assert pipe.section("recaption").describe.model == f"{own}/tiny-captioner"
    recipe = ab.recipe_for(cfg, cfg.rows[0], 0, str(tmp_path / "run"))
    assert recipe.model.encoder.model == f"{own}/tiny-vision"  # the tower every run starts from
    assert recipe.model.decoder.model == f"{own}/tiny-lm"  # and the LM


def test_overwrite_redoes_the_ablation_data_a_changed_recipe_refuses(tmp_path, monkeypatch):
    """A changed data setting stops `make ablate` with "use --overwrite": that option must exist
    and redo the finished stage with the new setting (here download's shard size, on 100 pairs)."""
    for var in ("MMDATA_WORKDIR", "MMDATA_DEMO_CORPUS", "MMDATA_DEMO_PORT", "MMDATA_SHARED"):
        monkeypatch.setenv(var, "")  # prepare_data sets them; restored after the test
    demo = cfgmod.load("pipelines/demo.yaml", cfgmod.Pipeline, [])
    fetch = demo.section("download").fetch.model_dump(mode="json", exclude_none=True)

    def spec(per_shard: int) -> ab.AblateConfig:
        recipe = tmp_path / f"data{per_shard}.yaml"
        recipe.write_text(json.dumps({
            "name": "demo", "workdir": str(tmp_path / "data"), "stages": ["download"],
            "engine": {"n_workers": 1, "threads_per_worker": 1},
            "download": {"input": "${MMDATA_DEMO_CORPUS}/pairs/urls.parquet", "samples_per_shard": per_shard,
                         "fetch": {**fetch, "connect_to": {"*.demo.mmdata.test": "127.0.0.1:${MMDATA_DEMO_PORT}"}}}}))
        return cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig, [
            f"data.recipe={recipe}", f"data.workdir={tmp_path / 'data'}", f"data.corpus={tmp_path / 'corpus'}",
            "data.pairs=100", "data.docs=20"])

    def shards() -> list[str]:
        return sorted(p.name for p in (tmp_path / "data" / "download").glob("*.tar"))

    ab.prepare_data(spec(50), echo=lambda s: None)
    assert shards() == ["00000.tar", "00001.tar"]
    with pytest.raises(cfgmod.ConfigError, match="samples_per_shard.*--overwrite"):
        ab.prepare_data(spec(25), echo=lambda s: None)
    ab.prepare_data(spec(25), echo=lambda s: None, overwrite=True)
    assert shards() == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]


def test_a_run_reads_its_data_by_content_not_by_the_manifests_provenance(tmp_path):
    """The `shards` stage rewrites its manifests on every pipeline run, with the recipe that ran it (the
    demo server's port, the git commit): the same shards must keep a run's settings, and other shard
    bytes must change them."""
    shards = [{"name": "00000.tar", "bytes": 10, "count": 2, "sha256": "aa"}, {"name": "00001.tar", "bytes": 9, "count": 1, "sha256": "bb"}]

    def manifest(name: str, port: int, digests=("aa", "bb")) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"kind": "captions", "recipe": {"config": {"connect_to": f"127.0.0.1:{port}"}, "git_commit": str(port)},
                                    "shards": [{**s, "sha256": d} for s, d in zip(shards, digests)]}))
        return str(path)

    first = ab.data_id(manifest("a.json", 36307))
    assert ab.data_id(manifest("b.json", 41873)) == first  # re-run: new port, same shards
    assert ab.data_id(manifest("c.json", 36307, ("aa", "cc"))) != first  # a shard's bytes changed
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "00000.tar").write_bytes(b"x")
    assert ab.data_id(str(tmp_path / "s" / "*.tar")).decode().endswith("00000.tar")  # a pattern: the names


def test_the_runs_lm_is_built_while_the_data_step_runs(tmp_path, monkeypatch):
    """`make ablate` pretrains the runs' tiny LM beside its data step (it needs no data): it must be
    the LM every run asks for, same folder and recipe, so that no run builds it again."""
    from mmdata.demo import built, tiny_lm

    monkeypatch.setenv("MMDATA_WORKDIR", "")  # own_workdir sets it; restored after the test
    cfg = cfgmod.load("pipelines/ablate.yaml", ab.AblateConfig, [f"data.workdir={tmp_path / 'data'}"])
    cfg.train_overrides = [*cfg.train_overrides, "model.decoder.pretrain.steps=3"]
    ab.own_workdir(cfg)
    ab._build_lm(cfg, next(r for r in cfg.rows if r.name == cfg.baseline))
    for row in cfg.rows:
        part = ab.recipe_for(cfg, row, 2, str(tmp_path / "run")).model.decoder
        assert part.model == str(tmp_path / "data" / "tiny-lm")
        assert built.recipe_of(part.model) == built._plain(tiny_lm.recipe(part.pretrain))
