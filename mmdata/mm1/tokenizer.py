"""The tokenizer: the LLM's own (with an added image placeholder token), or, for tests and the demo,
a byte-level BPE trained in code on the mixture's text. Either way a `PreTrainedTokenizerFast`,
saved with the model and loaded through `from_pretrained`.

`Encoder` turns a sample's slots (text strings and images, in reading order) into token ids, image
placeholder runs and the supervised-token mask: one function for training and for generation, so
prompts look exactly like training data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def train_bpe(texts: Iterable[str], vocab_size: int, image_token: str = "<image>"):
    """A byte-level BPE on `texts` (no network, deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, image_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[image_token])


def load(path: str, image_token: str = "<image>"):
    """The LLM's tokenizer with `image_token` added (a new special token unless it already exists)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]})
    if tok.pad_token is None:  # Llama-style tokenizers have none; padding is never attended or learned
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class Encoded:
    ids: list[int]
    supervised: list[bool]  # this token is a training target (text the model should produce)
    images: list[int]  # the sample's images (slot values), in order of their placeholder runs
    starts: list[int]  # where each image's placeholder run starts in `ids`


class Encoder:
    """Slots -> ids. A sample is BOS, then each slot in order (text tokens; an image as `tokens`
    placeholders), then EOS. Text slots are separated by a newline. Only text and EOS are targets."""

    def __init__(self, tokenizer, image_token: str, tokens: int):
        self.tok = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(image_token)
        self.tokens = tokens
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def text(self, s: str) -> list[int]:
        return self.tok(s, add_special_tokens=False)["input_ids"] if s else []

    def encode(self, slots: list, *, eos: bool = True) -> Encoded:
        ids: list[int] = [] if self.bos is None else [self.bos]
        sup: list[bool] = [False] * len(ids)
        images: list[int] = []
        starts: list[int] = []
        last_text = False
        for slot in slots:
            if isinstance(slot, str):
                t = self.text(("\n" if last_text else "") + slot)
                ids += t
                sup += [True] * len(t)
                last_text = True
            else:
                starts.append(len(ids))
                ids += [self.image_id] * self.tokens
                sup += [False] * self.tokens
                images.append(slot)
                last_text = False
        if eos and self.eos is not None:
            ids.append(self.eos)
            sup.append(True)
        return Encoded(ids, sup, images, starts)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()
