"""A tiny CLIP trained on the demo corpus in about a minute on CPU, so scores mean something offline.

No package ships pretrained image-text weights, and the demo and the tests run without a network.
The demo corpus knows the right caption of every image (`truth.parquet` `true_caption`), so a
small `CLIPModel` (a 64 px ViT and a 2-layer text transformer) learns to tell them apart. Its
WordPiece tokenizer is trained on the corpus' own captions with `tokenizers`. The result is saved
with `save_pretrained` (model, image processor, tokenizer) and loads through the same
`from_pretrained` path as `openai/clip-vit-large-patch14-336`.

The model never sees the noisy `caption` column it is later judged on. It trains on each image's
true description in several wordings: the canonical `true_caption` plus paraphrases that the demo
generator writes from the image's known concept (truth.parquet's shape, colour, ... columns) in
the AltText styles of the corpus, so the text tower learns the content words, not one template.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmdata.demo import built
from mmdata.images import open_rgb
from mmdata.memory import keep_freed_memory
from mmdata.models.clip import Preprocess

log = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # ids 0..3; CLIP pools the text at the first EOS


@dataclass(frozen=True)
class TinyClipConfig:
    image_size: int = 48
    patch_size: int = 12
    width: int = 64
    vision_layers: int = 2
    text_layers: int = 1
    heads: int = 2
    embed_dim: int = 64
    max_tokens: int = 32
    vocab_size: int = 1000
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    paraphrases: int = 4
    seed: int = 0
    progress: bool = False  # a bar over the steps (the demo) instead of a line every 25


def build_tokenizer(texts: list[str], vocab_size: int = 1000, max_tokens: int = 40):
    """A lower-cased WordPiece tokenizer trained on `texts`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS)))
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
        model_max_length=max_tokens, model_input_names=["input_ids", "attention_mask"],
    )


def build_model(cfg: TinyClipConfig, vocab_size: int):
    from transformers import CLIPConfig, CLIPModel

    common = {"hidden_size": cfg.width, "intermediate_size": 2 * cfg.width, "num_attention_heads": cfg.heads}
    config = CLIPConfig(
        text_config=dict(common, vocab_size=vocab_size, num_hidden_layers=cfg.text_layers,
                         max_position_embeddings=cfg.max_tokens, pad_token_id=0, bos_token_id=2, eos_token_id=3),
        vision_config=dict(common, num_hidden_layers=cfg.vision_layers, image_size=cfg.image_size,
                           patch_size=cfg.patch_size),
        projection_dim=cfg.embed_dim,
    )
    return CLIPModel(config)


def load_pairs(corpus_dir: str | Path, paraphrases: int = 4, seed: int = 0) -> pd.DataFrame:
    """Served images of the demo corpus with true descriptions: columns path, captions (a list)."""
    pairs = Path(corpus_dir) / "pairs"
    truth = pd.read_parquet(pairs / "truth.parquet")
    truth = truth[truth["file"].notna()].reset_index(drop=True)
    truth = truth[[(pairs / f).is_file() for f in truth["file"]]].reset_index(drop=True)
    if truth.empty:
        raise FileNotFoundError(f"{pairs}: no images of truth.parquet found (is this a demo corpus?)")
    captions = [[c] for c in truth["true_caption"]]
    concept_cols = ("shape", "colour", "count", "background", "texture", "word")
    if paraphrases > 1 and all(c in truth.columns for c in concept_cols):
        from mmdata.demo.docs import _EN_TOPIC
        from mmdata.demo.images import Concept, english_caption, seeded_rng

        for i, row in enumerate(truth[list(concept_cols)].to_dict("records")):
            word = row["word"] if isinstance(row["word"], str) else None
            concept = Concept(row["shape"], row["colour"], int(row["count"]), row["background"], row["texture"], word)
            rng = seeded_rng("tiny-clip", seed, i)
            captions[i] += [english_caption(concept, rng) for _ in range(paraphrases - 1)]
            # and one sentence as the demo's articles write about a picture, so a document's
            # sentences score against its images (clipscore on interleaved documents)
            captions[i].append(str(rng.choice(_EN_TOPIC)).format(colour=concept.colour, shape=concept.shape,
                                                                 background=concept.background))
    return pd.DataFrame({"path": [pairs / f for f in truth["file"]], "captions": captions})


def train(corpus_dir: str | Path, out_dir: str | Path, cfg: TinyClipConfig = TinyClipConfig(), echo=log.info) -> Path:
    """Train on `corpus_dir` (a demo corpus) and save_pretrained into `out_dir`; returns `out_dir`."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    keep_freed_memory()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = load_pairs(corpus_dir, cfg.paraphrases, cfg.seed)
    texts = [t for caps in data["captions"] for t in caps]
    owner = np.repeat(np.arange(len(data)), [len(c) for c in data["captions"]])
    urls = Path(corpus_dir) / "pairs" / "urls.parquet"
    corpus_text = texts + (list(pd.read_parquet(urls)["caption"].dropna()) if urls.exists() else [])
    tokenizer = build_tokenizer(corpus_text, cfg.vocab_size, cfg.max_tokens)
    processor = _image_processor()(size={"shortest_edge": cfg.image_size},
                                   crop_size={"height": cfg.image_size, "width": cfg.image_size})
    prep = Preprocess.from_processor(processor)
    with ThreadPoolExecutor(4) as pool:
        images = np.stack(list(pool.map(lambda p: prep(open_rgb(p.read_bytes(), draft=2 * cfg.image_size)), data["path"])))
    enc = tokenizer(texts, padding=True, truncation=True, max_length=cfg.max_tokens, return_tensors="pt")
    # per image, the rows of its wordings in `texts`; one is drawn per step
    first = np.searchsorted(owner, np.arange(len(data)))
    n_caps = np.bincount(owner, minlength=len(data))
    pixels = prep.pixels(torch.from_numpy(images), torch.float32)
    echo(f"tiny-clip: {len(data)} pairs, vocab {len(tokenizer)}, decoded in {time.time() - t0:.1f}s")

    model = build_model(cfg, len(tokenizer))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    n, bs = len(data), min(cfg.batch_size, len(data))
    order, pos = rng.permutation(n), 0
    bar = steps_bar("tiny-clip", cfg.steps, cfg.progress)
    for step in range(cfg.steps):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + bs])
        pos += bs
        x = pixels[idx]
        flip = torch.from_numpy(rng.random(bs) < 0.5)  # a mirrored scene has the same caption
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        rows = torch.from_numpy(first[idx.numpy()] + rng.integers(0, n_caps[idx.numpy()]))
        out = model(input_ids=enc["input_ids"][rows], attention_mask=enc["attention_mask"][rows], pixel_values=x,
                    return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
        elif step % 25 == 0 or step == cfg.steps - 1:
            echo(f"tiny-clip: step {step + 1}/{cfg.steps} loss {out.loss.item():.3f} ({time.time() - t0:.0f}s)")
    if bar is not None:
        bar.close()
        echo(f"tiny-clip: {cfg.steps} steps, loss {out.loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return built.save(out_dir, (model, processor, tokenizer), recipe(corpus_dir, cfg),
                      {"loss": round(out.loss.item(), 4), "seconds": round(time.time() - t0, 1)})


def recipe(corpus_dir: str | Path, cfg: TinyClipConfig, untrained: bool = False) -> dict:
    """What the weights depend on (built.json's recipe): the settings but the progress bar, the corpus."""
    return {"model": "tiny-clip" + "-untrained" * untrained, **{k: v for k, v in asdict(cfg).items() if k != "progress"},
            "corpus": built.corpus_id(corpus_dir)}


def _image_processor():
    try:  # transformers 5: the PIL backend (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:
        from transformers import CLIPImageProcessor as cls
    return cls


def untrained(corpus_dir: str | Path, out_dir: str | Path, cfg: TinyClipConfig = TinyClipConfig()) -> Path:
    """The same model, random-initialised (seed `cfg.seed`), with the tokenizer of the corpus: seconds
    to build, for tests whose scores need only be deterministic, not meaningful."""
    import torch

    urls = Path(corpus_dir) / "pairs" / "urls.parquet"
    texts = list(pd.read_parquet(urls)["caption"].dropna())
    tokenizer = build_tokenizer(texts, cfg.vocab_size, cfg.max_tokens)
    processor = _image_processor()(size={"shortest_edge": cfg.image_size},
                                   crop_size={"height": cfg.image_size, "width": cfg.image_size})
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(tokenizer)).eval()
    return built.save(out_dir, (model, processor, tokenizer), recipe(corpus_dir, cfg, untrained=True))


def ensure_tiny_clip(corpus_dir: str | Path, out_dir: str | Path, cfg: TinyClipConfig = TinyClipConfig(),
                     echo=log.info) -> str:
    """The tiny CLIP at `out_dir`, trained on `corpus_dir` first unless it is there, built from this
    corpus with these settings (`mmdata.demo.built`)."""
    built.ensure([out_dir], recipe(corpus_dir, cfg), lambda: train(corpus_dir, out_dir, cfg, echo), "tiny CLIP", echo)
    return str(out_dir)


def steps_bar(name: str, total: int, progress: bool):
    """The demo's models' training bar (tqdm, as the MM1 trainer's), or None without `progress`."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="step", dynamic_ncols=True)
