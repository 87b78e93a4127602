"""Tokenise a mixture batch and pack it into fixed-length sequences: the per-batch transform that
runs in the DataLoader workers (`mmdata.mix.loader(..., transform=Packer(...))`).

Every sample becomes one or more pieces: a sample longer than `seq_len`, or with more than
`max_images` images, is cut between tokens (never inside an image's placeholder run) into pieces
that each fit, so no text is thrown away (`long="truncate"` keeps only the first piece). Pieces
are packed first-fit-decreasing into sequences of `seq_len` tokens holding at most `max_images`
images. Inside a sequence every piece is its own document: positions restart at 0 (the decoder derives the block-diagonal mask from them) and a
token is a target only for the token before it in the same piece, so no sample sees or predicts
another. Targets are text tokens and EOS; image placeholders, BOS and padding never are.

Output (what the trainer receives), for S sequences of T = seq_len:
  input_ids, targets (-100 = no loss), position_ids, segments (piece id, -1 = padding)  int64 [S, T]
  n_images int64 [S]; pixels [sum(n_images), 3, H, W] in placeholder order, dtype as decoded (uint8
  or normalised float); and the mixture's per-sample fields (sources, keys, kinds, ...), epoch, batch,
  plus `pack`: text targets, image tokens, padding, pieces, split samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmdata.mm1.tokenizer import Encoded, Encoder

IGNORE = -100
_DROP = ("images", "slots", "texts", "image_sample")  # replaced by the packed tensors


@dataclass
class Piece:
    ids: list[int]
    sup: list[bool]
    images: list[int]  # batch image rows, placeholder order


class Packer:
    def __init__(self, encoder: Encoder, seq_len: int, max_images: int, pack: bool = True, long: str = "split"):
        if encoder.tokens + 1 > seq_len:
            raise ValueError(f"seq_len {seq_len} cannot hold one image ({encoder.tokens} tokens) and a text token")
        self.enc, self.seq_len, self.max_images, self.pack = encoder, seq_len, max_images, pack
        self.truncate = long == "truncate"

    # -- pieces

    def pieces(self, e: Encoded) -> list[Piece]:
        """Cut a sample where needed: <= seq_len tokens and <= max_images images per piece."""
        ids, q, runs = e.ids, self.enc.tokens, e.starts
        out, s, n = [], 0, len(ids)
        while s < n:
            e_ = min(s + self.seq_len, n)
            inside = [r for r in runs if s <= r < e_]
            cut = next((r for r in inside if r < e_ < r + q), None)
            if cut is not None:  # never split an image's run
                e_ = cut
                inside = [r for r in inside if r < e_]
            if len(inside) > self.max_images:
                e_ = inside[self.max_images]
                inside = inside[: self.max_images]
            first = runs.index(inside[0]) if inside else 0
            out.append(Piece(ids[s:e_], e.supervised[s:e_], e.images[first : first + len(inside)]))
            if self.truncate:
                break
            s = e_
        return [p for p in out if any(p.sup[1:])]  # a piece with nothing to predict costs compute only

    # -- the transform

    def __call__(self, batch: dict) -> dict:
        pieces: list[Piece] = []
        split = 0
        for slots in batch["slots"]:
            ps = self.pieces(self.enc.encode(slots))
            split += len(ps) > 1
            pieces += ps
        bins = self._bins(pieces)
        S, T = len(bins), self.seq_len
        ids = np.full((S, T), self.enc.pad, dtype=np.int64)
        tgt = np.full((S, T), IGNORE, dtype=np.int64)
        pos = np.zeros((S, T), dtype=np.int64)
        seg = np.full((S, T), -1, dtype=np.int64)
        n_img = np.zeros(S, dtype=np.int64)
        order: list[int] = []
        for row, members in enumerate(bins):
            at = 0
            for k, i in enumerate(members):
                p = pieces[i]
                n = len(p.ids)
                ids[row, at : at + n] = p.ids
                sup = np.asarray(p.sup, dtype=bool)
                nxt = np.asarray(p.ids[1:], dtype=np.int64)
                tgt[row, at : at + n - 1] = np.where(sup[1:], nxt, IGNORE)
                pos[row, at : at + n] = np.arange(n)
                seg[row, at : at + n] = k
                order += p.images
                n_img[row] += len(p.images)
                at += n
            if at < T:  # padding is a document of its own: positions restart, nothing attends into it
                pos[row, at:] = np.arange(T - at)
        images = batch["images"]
        out = {k: v for k, v in batch.items() if k not in _DROP}
        out.update({
            "input_ids": torch.from_numpy(ids), "targets": torch.from_numpy(tgt),
            "position_ids": torch.from_numpy(pos), "segments": torch.from_numpy(seg),
            "n_images": torch.from_numpy(n_img),
            "pixels": images[torch.as_tensor(order, dtype=torch.int64)] if order else images[:0],
            "pack": {"sequences": S, "targets": int((tgt != IGNORE).sum()), "image_tokens": int(n_img.sum()) * self.enc.tokens,
                     "padding": int((seg < 0).sum()), "pieces": len(pieces), "split_samples": split,
                     "images_dropped": int(images.shape[0]) - len(order)},
        })
        return out

    def _bins(self, pieces: list[Piece]) -> list[list[int]]:
        """First-fit decreasing by length, within the token and image budgets; deterministic."""
        if not self.pack:
            return [[i] for i in range(len(pieces))]
        room: list[int] = []
        imgs: list[int] = []
        bins: list[list[int]] = []
        for i in sorted(range(len(pieces)), key=lambda i: (-len(pieces[i].ids), i)):
            n, m = len(pieces[i].ids), len(pieces[i].images)
            for b in range(len(bins)):
                if room[b] >= n and imgs[b] + m <= self.max_images:
                    bins[b].append(i)
                    room[b] -= n
                    imgs[b] += m
                    break
            else:
                bins.append([i])
                room.append(self.seq_len - n)
                imgs.append(m)
        return bins

