"""Fusing an AltText with a captioner's description (VeCap, CapsFusion), and the guards on both.

- `entities(alttext)`: the names a web AltText carries and a captioner cannot know: capitalised
  runs not at the start of a sentence ("Royal Jordanian Airbus A320"), codes with digits or capitals
  ("JY-AYA", "A320"), all-caps words ("CAFE"), quoted titles, years.
- `rule_fuse`: the description with those entities joined (the recipe's `rule_template`); used when
  no fusion LLM is configured.
- `LlmFuser`: any Hugging Face causal LM with a chat template, prompted with the recipe's template
  (AltText and description filled in), batched with left padding, greedy.
- `guard(text, ...)`: why a generated text must not be used (`empty`, `too_long`, `repeated`,
  `echo`), or None. Heavy imports stay inside the LLM class.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Sequence
from typing import Any

from mmdata.config import FuseConfig, GuardConfig

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+(?:[-'’.][^\W_]+)*", re.UNICODE)
_LETTER = re.compile(r"[^\W\d_]")


def words(text: str) -> list[str]:
    return _WORD.findall(text or "")


def clean(text: str | None) -> str:
    """Whitespace collapsed, wrapping quotes and a leading `Caption:`-style label removed."""
    t = " ".join((text or "").split())
    t = re.sub(r"^(?:(?:fused |final |new )?caption|answer|output|description)\s*:\s*", "", t, flags=re.IGNORECASE)
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'“”":
        t = t[1:-1].strip()
    return t.strip("“”").strip()


def guard(text: str, cfg: GuardConfig, instructions: str = "") -> str | None:
    """Why `text` must not be used as a caption, or None when it passes."""
    w = [x.lower() for x in words(text)]
    if sum(1 for x in w if _LETTER.search(x)) < cfg.min_words:
        return "empty"
    if len(w) > cfg.max_words:
        return "too_long"
    run = 1
    for a, b in itertools.pairwise(w):
        run = run + 1 if a == b else 1
        if run >= cfg.max_repeat:
            return "repeated"
    if len(w) >= 8 and len(set(w)) / len(w) < cfg.min_distinct:
        return "repeated"
    if instructions:
        n = cfg.echo_words
        said = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
        told = [x.lower() for x in words(instructions)]
        if any(tuple(told[i : i + n]) in said for i in range(len(told) - n + 1)):
            return "echo"
    return None


# ---------------------------------------------------------------------------------------------
# rule-based fusion

# Capitalised words that start AltTexts without naming anything (first word of a sentence only).
_COMMON_WORDS = (
    "a an the this that these those my our your his her their its one two three four five six seven eight nine ten "
    "some many several few all no each every here there it we you they i he she "
    "photo photos photograph picture pictures image images img pic pics illustration vector drawing painting "
    "close closeup close-up view views stock free download shot portrait detail details top front back side "
    "at in on of for with by from to into over under near and or but new old best")
_COMMON = frozenset(_COMMON_WORDS.split())
_CONNECT = frozenset(["of", "de", "la", "le", "du", "da", "di", "del", "van", "von", "der", "den", "the", "and", "&"])
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{2,60})[\"“”«»]")
_FILEISH = re.compile(r"\.(jpe?g|png|gif|webp|bmp|tiff?|svg)$", re.IGNORECASE)
_YEAR = re.compile(r"^(1[89]\d\d|20\d\d)s?$")


def _namelike(token: str, first: bool) -> bool:
    if _FILEISH.search(token):
        return False
    bare = token.strip(".'’")
    if len(bare) < 2 and not bare.isdigit():
        return False
    if _YEAR.match(bare):
        return True
    has_digit = any(c.isdigit() for c in bare)
    upper = sum(1 for c in bare if c.isupper())
    if has_digit and (upper or "-" in bare):
        return True  # codes: A320, JY-AYA, RTX-4090
    if bare.isupper() and upper >= 2:
        return True  # CAFE, NASA
    if upper and not bare[0].isupper():
        return True  # iPhone, eBay
    if bare[0].isupper():
        return not (first and bare.lower() in _COMMON)
    return False


def entities(alttext: str | None, max_n: int = 4) -> list[str]:
    """Names in an AltText, in order, each once: quoted titles, then runs of name-like words."""
    text = " ".join((alttext or "").split())
    found: list[str] = []

    def add(e: str) -> None:
        e = e.strip(" ,;:.!?-|()[]")
        if e and e.lower() not in {f.lower() for f in found}:
            found.append(e)

    for m in _QUOTED.finditer(text):
        add(m.group(1))
    text = _QUOTED.sub(" | ", text)
    # sentence starts: the text's start and after . ! ? : | - (AltText separators)
    tokens = re.findall(r"[^\s|:;!?(),\[\]]+|[|:;!?(),\[\]]", text)
    run: list[str] = []
    first = True
    for tok in tokens:
        if len(tok) == 1 and tok in "|:;!?(),[]":
            if run:
                add(" ".join(run))
            run, first = [], tok in "|:;!?"
            continue
        ends = tok.endswith((".", "!", "?"))
        word = tok.rstrip(".!?") if ends and not re.search(r"\d\.\d", tok) else tok
        if _namelike(word, first) or (run and (word.lower() in _CONNECT or word.isdigit())):
            run.append(word)  # a name, or a connector / number inside one (Bank of America, iPhone 15 Pro)
        else:
            while run and run[-1].lower() in _CONNECT:
                run.pop()
            if run:
                add(" ".join(run))
            run = []
        first = ends
        if ends and run:
            while run and run[-1].lower() in _CONNECT:
                run.pop()
            add(" ".join(run))
            run = []
    while run and run[-1].lower() in _CONNECT:
        run.pop()
    if run:
        add(" ".join(run))
    return found[:max_n]


def rule_fuse(alttext: str | None, description: str, cfg: FuseConfig) -> tuple[str, list[str]]:
    """The description with the AltText's entities that it does not already name; (text, entities)."""
    have = description.lower()
    keep = [e for e in entities(alttext, cfg.max_entities * 2) if e.lower() not in have][: cfg.max_entities]
    if not keep:
        return description, []
    return cfg.rule_template.format(description=description, entities=", ".join(keep)), keep


# ---------------------------------------------------------------------------------------------
# LLM fusion


def render_prompt(cfg: FuseConfig, alttext: str, description: str) -> list[dict]:
    """The chat messages for one pair."""
    user = cfg.prompt.replace("{alttext}", alttext).replace("{description}", description)
    return ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": user}]


def instructions(cfg: FuseConfig) -> str:
    """The prompt's own words (no inputs): what an echoing model repeats."""
    parts = re.split(r"\{alttext\}|\{description\}", cfg.prompt)
    return "\n".join(([cfg.system] if cfg.system else []) + parts)


class LlmFuser:
    """One loaded chat LM. Not thread-safe: one per worker process, used from one thread."""

    def __init__(self, cfg: FuseConfig, model: Any, tokenizer: Any, device: str, revision: str):
        self.cfg, self.model, self.tokenizer, self.device, self.revision = cfg, model, tokenizer, device, revision
        self.batch_size = cfg.batch_size
        self.system_in_user = False
        try:
            self._chat("a", "b")
        except Exception as e:  # e.g. templates that refuse a system role
            if not cfg.system:
                raise
            log.warning("%s: chat template refused the system message (%s); sending it inside the user turn",
                        cfg.model, e)
            self.system_in_user = True
            self._chat("a", "b")
        # the prompt without the AltText: what is left of max_input_tokens for the AltText
        self.overhead = len(self.tokenizer(self._chat("", ""), add_special_tokens=False)["input_ids"])

    @classmethod
    def load(cls, cfg: FuseConfig, device: str) -> LlmFuser:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mmdata.models.device import pick_dtype
        from mmdata.models.hub import resolved_revision

        dtype = pick_dtype(device, cfg.dtype)
        tok = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"fuse.model {cfg.model}: its tokenizer has no chat template; fusion needs an "
                             "instruction-tuned chat model")
        tok.padding_side = "left"  # batched generation: every prompt ends where generation starts
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype,
                                                     trust_remote_code=cfg.trust_remote_code)
        model = model.to(device).eval()
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
        return cls(cfg, model, tok, device, resolved_revision(cfg.model, cfg.revision, model))

    def _chat(self, alttext: str, description: str) -> str:
        msgs = render_prompt(self.cfg, alttext, description)
        if self.system_in_user and msgs[0]["role"] == "system":
            msgs = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def _cut(self, alttext: str, description: str) -> str:
        """The AltText shortened so the whole prompt stays within max_input_tokens (CapsFusion: 256)."""
        room = self.cfg.max_input_tokens - self.overhead - len(self.tokenizer(description, add_special_tokens=False)["input_ids"])
        ids = self.tokenizer(alttext, add_special_tokens=False)["input_ids"]
        if len(ids) <= max(room, 8):
            return alttext
        return self.tokenizer.decode(ids[: max(room, 8)], skip_special_tokens=True)

    def fuse(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """(AltText, description) pairs -> raw generated texts (unguarded), in order."""
        from mmdata.models.clip import run_adaptive

        prompts = [self._chat(self._cut(a, d), d) for a, d in pairs]
        parts, self.batch_size = run_adaptive(self._generate, prompts, self.batch_size, self.device)
        return [t for p in parts for t in p]

    def _generate(self, prompts: Sequence[str]) -> list[str]:
        import torch

        enc = self.tokenizer(list(prompts), padding=True, return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
