"""The in-context signal on the training distribution: how a model predicts the names on the demo's
gallery pages (mmdata/demo/docs.py `_gallery`) as they reach the trainer.

A gallery is a few-shot episode: pictures of 2-3 classes, each followed by "<Name>. <sentence>",
names new on every page. Read from the interleaved training shards, each page is decoded and cut as
the trainer sees it (`max_images`, the first `seq_len` tokens, as `long: truncate`), run through
the model once, and every name right after a picture is scored:

- `loss_first` / `loss_repeat`: the name's summed loss (nats over its tokens) where the page shows it
  for the first time / again. A model that copies names from its context has loss_repeat well
  under loss_first; one that memorised the pages (seen several times in training) has loss_first low
  too (in-weights, not in-context).
- `choice_repeat`: at a repeat, how often the name's first token beats the first token of every other
  name the page showed before (names sharing a first token are left out). A model that reads the
  earlier pictures picks the right name (in-context learning); one that only copies names seen on
  the page is at chance among them (about 50%: most pages have 2 classes). `choice_first`: the same
  where the name is new; a copying model is below chance there (it prefers the names it has seen).
The evaluation's `icl` task asks the same on classes no gallery shows.

- `image_spread`: the share of the image tokens' energy (the connector's output, what the decoder
  reads in place of each picture) that differs between the scored pictures, 1 - |mean|^2 / mean |x|^2
  over pictures; `image_cosine`, the mean cosine between two different pictures' tokens; and their
  norm beside the text embeddings'. Matching a picture to an earlier one (what a name choice at a
  repeat needs) rests on that share: a connector that puts a constant vector over every picture
  leaves the decoder's attention little to tell them apart by (docs/eval.md, reading 6).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from mmdata import fsio, samples
from mmdata.demo.tasks import LABELS
from mmdata.mix.decode import parse

_NAMES = frozenset(LABELS)


@dataclass
class GalleryProbe:
    docs: int = 0  # interleaved documents read
    galleries: int = 0  # of them gallery pages
    scored: int = 0  # galleries run through the model
    pictures: float = 0.0  # per scored gallery, as the trainer sees it (after max_images / seq_len)
    names: float = 0.0  # names scored per gallery
    name_tokens: dict = field(default_factory=dict)  # tokens per name (the tokenizer's) -> how many of LABELS
    loss: dict = field(default_factory=dict)  # "first" / "repeat" -> (mean nats, n)
    choice: dict = field(default_factory=dict)  # "first" / "repeat" -> (right, n)
    image_spread: float = float("nan")  # share of the image tokens' energy that differs between pictures
    image_cosine: float = float("nan")  # mean cosine between two different pictures' image tokens
    image_norm: float = float("nan")  # mean norm of an image token
    text_norm: float = float("nan")  # mean norm of a text token's embedding

    def lines(self) -> list[str]:
        out = [f"{self.galleries} galleries in {self.docs} interleaved documents; {self.scored} scored: "
               f"{self.pictures:.1f} pictures and {self.names:.1f} names each as trained; tokens per name "
               + ", ".join(f"{k}: {v}" for k, v in sorted(self.name_tokens.items()))]
        for k in ("first", "repeat"):
            if k in self.loss:
                m, n = self.loss[k]
                r, c = self.choice.get(k, (0, 0))
                out.append(f"{k:6s} names: loss {m:.2f} nats (n={n}); first token right among the page's names "
                           f"{r}/{c}" + (f" = {100 * r / c:.1f}%" if c else ""))
        out.append(f"image tokens: {100 * self.image_spread:.1f}% of their energy differs between pictures (mean cosine "
                   f"{self.image_cosine:.3f} between two pictures); norm {self.image_norm:.2f}, text embeddings "
                   f"{self.text_norm:.2f}")
        return out


def _galleries(shards: str, probe: GalleryProbe) -> Iterator[tuple[dict, dict]]:
    for url in fsio.expand(fsio.join(shards, "interleaved", "*.tar")):
        for sample in samples.read_shard(url):
            rec = parse(sample)
            probe.docs += 1
            if any(s.get("type") == "image" and "/collection-" in (s.get("url") or "") for s in rec.get("slots", [])):
                probe.galleries += 1
                yield sample, rec


def _name(text: str) -> str | None:
    head = text.split(".", 1)[0]
    return head if head in _NAMES else None


def gallery_probe(model, shards: str, *, max_images: int = 16, seq_len: int = 512, limit: int = 100) -> GalleryProbe:
    """Score the names on the first `limit` gallery pages of `shards` (the `shards` stage's folder)."""
    import torch

    from mmdata.config import MixDecodeConfig
    from mmdata.mix.decode import Decoder

    codec, img = model.codec, model.image
    dec = Decoder(MixDecodeConfig(image_size=img.size, resize=img.resize, mean=img.mean, std=img.std, draft=img.draft,
                                  max_images=max_images))
    probe = GalleryProbe(name_tokens=dict(Counter(len(codec.text(w)) for w in LABELS)))
    losses: dict[str, list[float]] = {"first": [], "repeat": []}
    choice = {"first": [0, 0], "repeat": [0, 0]}
    pictures = names = 0
    tokens: list = []  # each scored picture's image tokens, flattened
    was = model.training
    model.eval()
    for sample, rec in _galleries(shards, probe):
        if probe.scored >= limit:
            continue  # keep counting the galleries
        item = dec.item(sample, False, rec)
        enc = codec.encode(item.slots)
        n = min(len(enc.ids), seq_len)
        n = next((s for s in enc.starts if s < n < s + codec.tokens), n)  # as the packer cuts: never inside a picture
        kept = [j for j, s in enumerate(enc.starts) if s + codec.tokens <= n]
        ids = torch.tensor(enc.ids[:n])[None]
        pix = torch.stack([item.images[enc.images[j]] for j in kept]) if kept else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
        # the forward pass computes the image tokens anyway: keep the connector's output, not a second run of it
        hook = model.connector.register_forward_hook(lambda _m, _i, out: tokens.append(out.flatten(1).float().cpu()))
        try:
            with torch.no_grad():
                logits = model(ids.to(model.device), torch.arange(n)[None].to(model.device), None, pix.to(model.device),
                               return_logits=True)
        finally:
            hook.remove()
        logp = torch.log_softmax(logits[0].float(), -1).cpu()
        page = {w for s in item.slots if isinstance(s, str) and (w := _name(s))}
        first_tok = {w: codec.text(w)[0] for w in page}
        # walk the slots as Encoder.encode does, to know where each text starts
        at, last_text, seen = (0 if codec.bos is None else 1), False, set()
        for slot in item.slots:
            if not isinstance(slot, str):
                at += codec.tokens
                last_text = False
                continue
            toks = codec.text(("\n" if last_text else "") + slot)
            w = _name(slot)
            name = codec.text(w) if w and not last_text else None
            if name and toks[: len(name)] == name and at + len(name) <= n:
                kind = "repeat" if w in seen else "first"
                losses[kind].append(-float(sum(logp[at - 1 + k, t] for k, t in enumerate(name))))
                others = {first_tok[o] for o in seen - {w}}
                if others and name[0] not in others:
                    choice[kind][0] += all(bool(logp[at - 1, name[0]] > logp[at - 1, o]) for o in others)
                    choice[kind][1] += 1
                seen.add(w)
                names += 1
            at += len(toks)
            last_text = True
        pictures += len(kept)
        probe.scored += 1
    model.train(was)
    if probe.scored:
        probe.pictures, probe.names = pictures / probe.scored, names / probe.scored
    probe.loss = {k: (sum(v) / len(v), len(v)) for k, v in losses.items() if v}
    probe.choice = {k: tuple(v) for k, v in choice.items()}
    if tokens:
        _spread(probe, torch.cat(tokens), model.decoder.get_input_embeddings().weight.detach().float().cpu(), codec.tokens)
    return probe


def _spread(probe: GalleryProbe, x, text, per_picture: int) -> None:
    """x [pictures, Q * width]: the image-token statistics of GalleryProbe (float64 for the sums)."""
    import torch

    x = x.double()
    energy = (x * x).sum(1).mean()
    probe.image_spread = float(1 - (x.mean(0) ** 2).sum() / energy) if energy > 0 else float("nan")
    if len(x) > 1:
        u = torch.nn.functional.normalize(x, dim=1)
        sim = u @ u.T
        probe.image_cosine = float((sim.sum() - sim.diagonal().sum()) / (len(x) * (len(x) - 1)))
    probe.image_norm = float(x.view(len(x), per_picture, -1).norm(dim=-1).mean())
    probe.text_norm = float(text.norm(dim=-1).mean())
