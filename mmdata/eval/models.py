"""Models behind the evaluation interface (`mmdata.eval.harness.EvalModel`).

`MM1Model` wraps the bundled trainer's exported model (`mmdata.mm1.MM1`): prompts are encoded by
the same `Encoder` as training data (BOS, text slots, each image as its placeholder run), so a
few-shot prompt looks exactly like an interleaved training document.
"""

from __future__ import annotations

from collections.abc import Sequence


class MM1Model:
    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, path: str, device: str | None = None) -> MM1Model:
        from mmdata.mm1 import MM1

        return cls(MM1.from_pretrained(path, device=device))

    def generate(self, prompts: Sequence[list], max_new_tokens: int, num_beams: int = 1,
                 length_penalty: float = 1.0) -> list[str]:
        # the trainer's generate stops at EOS; the harness cuts at line breaks (captions) and sentence ends
        return self.model.generate([list(p) for p in prompts], max_new_tokens=max_new_tokens, num_beams=num_beams,
                                   batch_size=max(1, len(prompts)))

    def _pixels(self, img, cache: dict):
        """A prompt image prepared exactly as `generate` prepares it (the training decoder's resize)."""
        key = id(img)
        if key not in cache:
            cache[key] = self.model._image(img)
        return cache[key]

    def score(self, prompts: Sequence[list], continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation's tokens after its prompt."""
        import torch

        codec = self.model.codec
        rows, spans, images = [], [], []
        cache: dict = {}
        for prompt, cont in zip(prompts, continuations):
            prompt = list(prompt)
            full = prompt[:-1] + [prompt[-1] + cont] if prompt and isinstance(prompt[-1], str) else prompt + [cont]
            pre = codec.encode(prompt, eos=False).ids
            enc = codec.encode(full, eos=False)
            start = 0  # where the continuation's tokens begin: the longest shared prefix
            while start < min(len(pre), len(enc.ids)) and pre[start] == enc.ids[start]:
                start += 1
            if start == len(enc.ids):
                raise ValueError(f"continuation {cont!r} adds no token")
            rows.append(enc.ids)
            spans.append((max(1, start), len(enc.ids)))
            images += [self._pixels(x, cache) for x in enc.images]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), codec.pad, dtype=torch.int64)
        pos = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            pos[r, : len(row)] = torch.arange(len(row))
            pos[r, len(row) :] = torch.arange(width - len(row))  # padding: a document of its own
        device = self.model.mean.device
        pixels = torch.stack(images) if images else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(ids.to(device), pos.to(device), None, pixels.to(device), return_logits=True)
        self.model.train(was)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for r, (a, b) in enumerate(spans):
            tgt = ids[r, a:b].to(device)
            out.append(float(logp[r, a - 1 : b - 1].gather(-1, tgt.unsqueeze(-1)).sum()))
        return out
