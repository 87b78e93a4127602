"""Typed pipeline recipes: YAML in `pipelines/`, validated by pydantic at the edge.

A recipe names a work directory, the Dask engine settings and one section per stage. Unknown keys
are errors: a misspelt threshold silently falling back to its default is the worst kind of bug in a
data pipeline. Errors come out as one line per problem, naming the file, the field path and what was
expected.

Strings may use `${VAR}` / `${VAR:-default}`: the demo and tests point recipes at a server whose
port is only known at run time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Fields that change how fast or by which route work is done, never its result: left out of a
    # stage's fingerprint, so a resumed run may retune them (the demo server's port changes per run).
    PACE: ClassVar[frozenset[str]] = frozenset()


class EngineConfig(Strict):
    """Where shard tasks run. No scheduler means a LocalCluster on this machine."""

    scheduler: str | None = Field(None, description="tcp://host:port of an existing Dask scheduler")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True
    memory_limit: str = "auto"
    retries: int = Field(2, ge=0, description="extra attempts for a failing shard task")
    progress: bool = True
    task_profiler: bool = Field(False, description="Dask's statistical profiler in the LocalCluster's workers "
                                "(dashboard 'Profile'); it samples task threads every 10 ms, costing 1-2% of a stage")
    start_method: Literal["auto", "fork", "spawn", "forkserver"] = Field(
        "auto", description="how a LocalCluster starts its worker processes. auto: fork on Linux while this process "
        "has not loaded torch (workers then inherit its imports: ready in ~0.1 s instead of ~1 s of re-importing "
        "on each), else spawn, Dask's default")


class CheckConfig(Strict):
    """The `check` stage: validates every record of a shard set against its JSON schema."""

    input: str | None = Field(None, description="shard set to check; default {workdir}/download")


class FetchConfig(Strict):
    """HTTP fetching (mmdata.fetch): limits, politeness and safety. Used by download and interleaved."""

    PACE = frozenset({"concurrency", "per_host", "per_host_rate", "cluster_wide", "user_agent", "connect_to"})

    concurrency: int = Field(64, ge=1, description="requests in flight (plus fetched bodies awaiting processing)")
    per_host: int = Field(8, ge=1, description="requests in flight per host (host:port), over the whole run")
    per_host_rate: float | None = Field(None, gt=0, description="requests per second per host over the whole run; None: no limit")
    cluster_wide: bool = Field(True, description="per_host, per_host_rate and Retry-After pauses hold across every task of "
                               "the run (a budget kept on the Dask scheduler); false: per task")
    connect_timeout: float = Field(5.0, gt=0, description="seconds for DNS + TCP (+TLS) connect")
    first_byte_timeout: float = Field(10.0, gt=0, description="seconds to the response headers; also max stall between body chunks")
    total_timeout: float = Field(30.0, gt=0, description="seconds for one request (each redirect hop), body included")
    max_bytes: int = Field(32 * 2**20, ge=1, description="larger bodies are refused (Content-Length or counted)")
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(2, ge=0, description="extra attempts after a transient failure (timeouts, resets, 408/429/5xx)")
    backoff_base: float = Field(0.5, ge=0, description="seconds; attempt n waits uniform(0, base * 2**n) (full jitter)")
    backoff_max: float = Field(10.0, ge=0, description="cap on one backoff wait")
    retry_after: bool = Field(True, description="honour Retry-After on 429/503 (pauses the whole host)")
    retry_after_max: float = Field(30.0, ge=0, description="a longer Retry-After gives up instead of waiting")
    user_agent: str = "mmdata/0.1 (image-text dataset crawler; +https://github.com/mmdata/mmdata)"
    x_robots_tag: bool = Field(True, description="drop responses whose X-Robots-Tag holds a directive below")
    x_robots_directives: list[str] = ["noai", "noimageai", "noindex", "noimageindex"]
    robots_txt: bool = Field(True, description="honour each host's robots.txt (fetched once per host and task)")
    opt_out: list[str] | str = Field(
        default_factory=list,
        description="domains (cover subdomains) or URL prefixes never fetched; a string is a file (fsspec) of them, one a line",
    )
    ssrf_guard: bool = Field(True, description="refuse non-public addresses (loopback, private, link-local, metadata) after DNS")
    allow: list[str] = Field(default_factory=list, description="hosts (glob) or IPs/CIDRs exempt from the SSRF guard")
    connect_to: dict[str, str] = Field(
        default_factory=dict,
        description="host glob -> 'addr:port' to connect to instead (curl --connect-to); Host header and URL unchanged. "
        "'http://addr:port' also speaks plain HTTP there for https URLs (a local mirror or cache)",
    )


class ImageConfig(Strict):
    """Image verification, resizing and encoding (mmdata.images)."""

    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    image_size: int = Field(256, ge=1, description="target side in pixels (see resize_mode)")
    resize_only_if_bigger: bool = Field(False, description="never upscale")
    downscale_filter: Literal["area", "bilinear", "bicubic", "lanczos"] = Field(
        "area", description="shrinking (all anti-aliased): area is OpenCV's exact area average, and colour JPEGs "
        "stored as jpg then never touch Pillow (the fastest path); bilinear, bicubic and lanczos are Pillow's, "
        "sharper for more CPU (docs/download.md)")
    upscale_filter: Literal["area", "bilinear", "bicubic", "lanczos"] = Field(
        "bicubic", description="enlarging: bicubic is 0.6 dB under lanczos for a third of the CPU per image (docs/download.md)")
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100, description="jpg/webp quality")
    jpeg_subsampling: Literal["auto", "4:4:4", "4:2:2", "4:2:0"] = Field(
        "auto", description="chroma subsampling of stored JPEGs; auto: none (4:4:4) at quality >= 90, else 4:2:0")
    png_compression: int = Field(6, ge=0, le=9)
    skip_reencode: bool = Field(False, description="resize_mode no: keep the original bytes when the format already matches")
    min_side: int = Field(0, ge=0, description="skip images whose shorter original side is smaller")
    max_image_area: float | None = Field(None, gt=0, description="skip images with more original pixels")
    max_aspect_ratio: float | None = Field(None, ge=1, description="skip images whose long/short side ratio is larger")
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit: refuse to decode larger images")
    border_color: tuple[int, int, int] = (255, 255, 255)


class DownloadConfig(Strict):
    """The `download` stage: image-caption pairs from URL lists into img2dataset-style shards."""

    PACE = frozenset({"threads"})

    input: str | list[str] = Field(..., description="file, folder, glob or brace pattern (local or fsspec URL)")
    input_format: Literal["auto", "parquet", "csv", "tsv", "jsonl", "json", "txt"] = "auto"
    url_col: str = "url"
    caption_col: str | None = "caption"
    save_additional_columns: list[str] | None = Field(None, description="input columns carried to the metadata; None = all others")
    samples_per_shard: int = Field(10_000, ge=1, le=10_000, description="keys are {shard:05d}{index:04d}")
    max_url_length: int = Field(4096, ge=16, description="a longer url makes its row skipped_invalid_url (crawlers cap at a few KB)")
    max_line_bytes: int = Field(2**20, ge=1024, description="csv/tsv/jsonl/txt lines are read at most this many bytes at a time; "
                                "a longer line makes its row skipped_invalid_url")
    output: str | None = Field(None, description="default {workdir}/download")
    threads: int = Field(0, ge=0, description="image-processing threads per shard task; 0: in the event loop's thread "
                         "(fastest when each worker process has one core, the engine's default shape)")
    fetch: FetchConfig = FetchConfig()
    image: ImageConfig = ImageConfig()


class StreamConfig(Strict):
    """One stream of the `shards` stage: a shard set plus the stages whose columns and decisions join it."""

    enabled: bool = True
    input: str = Field(..., description="shard set: a stage folder under workdir, or a path/URL")
    sidecars: list[str] = Field(
        default_factory=list,
        description="stage folders under workdir whose drop_reason and columns apply, in order; absent ones are skipped",
    )


class CaptionsStream(StreamConfig):
    input: str = "download"
    sidecars: list[str] = ["filter", "dedup", "clipscore", "recaption"]


class InterleavedStream(StreamConfig):
    input: str = "interleaved"
    sidecars: list[str] = ["clipscore_docs"]  # images whose CLIP score says unrelated leave the documents


class TextStream(StreamConfig):
    input: str = "text"


class ShardsConfig(Strict):
    """The `shards` stage: kept samples into globally shuffled, sized training shards with a manifest."""

    output: str | None = Field(None, description="root of the training shards (local or s3://); default {workdir}/shards")
    captions: CaptionsStream = CaptionsStream()
    interleaved: InterleavedStream = InterleavedStream()
    text: TextStream = TextStream()
    shard_samples: int | None = Field(10_000, ge=1, description="samples per training shard (None: by bytes only)")
    shard_bytes: ByteSize | None = Field(None, description="target bytes per training shard, e.g. 512MB")
    seed: int | None = Field(None, description="shuffle seed; default the recipe's seed")
    synthetic_caption: str = Field("recaption.synthetic_caption", description="joined column holding the VeCap caption")
    score_columns: list[str] = Field(
        ["*"], description="joined sidecar columns (globs over stage.column) copied into each sample's json `scores`; "
        "only scalar values are copied",
    )
    energon: bool = Field(True, description="make each local stream folder an Energon dataset (.nv-meta/)")

    @model_validator(mode="after")
    def _sized(self) -> ShardsConfig:
        if not self.shard_samples and not self.shard_bytes:
            raise ValueError("set shard_samples or shard_bytes (or both)")
        return self


class MixDecodeConfig(Strict):
    """How the mixture sampler turns samples into trainer inputs (see docs/mixture.md)."""

    image_size: int = Field(336, ge=8, description="square side of every image tensor (MM1: 224/336/378)")
    resize: Literal["center_crop", "squash", "pad"] = "center_crop"
    draft: float = Field(1.0, ge=0, description=(
        "JPEGs decode at the smallest 1/2, 1/4, 1/8 scale whose sides stay >= draft x image_size "
        "(0 = full decode); higher = closer to a full-resolution Lanczos, slower (docs/mixture.md)"))
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    max_images: int = Field(16, ge=1, description="image slots kept per sample (MM1: 16 per sequence)")
    image_tokens: int = Field(144, ge=0, description="tokens one image costs (token-weighted ratios)")
    chars_per_token: float = Field(4.0, gt=0, description="text token estimate: characters per token")

    @model_validator(mode="after")
    def _draft(self) -> MixDecodeConfig:
        if 0 < self.draft < 1:
            raise ValueError(f"draft {self.draft}: 0 (full decode) or >= 1 (below 1 the decode is smaller "
                             f"than the output and would be upscaled)")
        return self


class MixSource(Strict):
    """One named source of a mixture: webdataset shards and its share."""

    shards: str | list[str] = Field(..., description="shard pattern(s): local, s3://, http://, {a..b} braces, globs")
    weight: float = Field(..., ge=0, description="relative share (samples or tokens, per `unit`)")
    synthetic_share: float = Field(0.0, ge=0, le=1, description="pairs: share using json synthetic_caption (VeCap)")
    tokens_per_sample: float | None = Field(None, gt=0, description="unit=tokens: skip the probe and use this")


class Mixture(Strict):
    """A training data mixture (pipelines/mixtures/*.yaml): sources, weights and guarantees."""

    name: str = "mixture"
    seed: int = 0
    sources: dict[str, MixSource] = Field(..., min_length=1)
    total: float | None = Field(None, gt=0, description="if set, the weights must sum to it (catches typos)")
    global_batch: int = Field(512, ge=1, description="samples per global batch, over all ranks")
    guarantee: Literal["exact", "expected"] = "exact"
    unit: Literal["samples", "tokens"] = "samples"
    exhaustion: Literal["cycle", "stop", "error"] = "cycle"
    lanes: int = Field(8, ge=1, description="readers per rank; DataLoader num_workers must divide it")
    steps_per_epoch: int | None = Field(None, ge=1, description="global batches per epoch; None = until exhaustion")
    token_probe: int = Field(64, ge=1, description="unit=tokens: samples read per source to estimate tokens")
    damaged: Literal["stop", "skip"] = Field("stop", description="a damaged, missing or miscounted shard: stop with "
                                             "one line naming it (default), or skip it and count it; never served")
    checksums: bool = Field(True, description="check every member read against the shards stage's member index "
                            "(name, offset, size, xxh3 of its bytes)")
    decode: MixDecodeConfig = MixDecodeConfig()

    @model_validator(mode="after")
    def _weights(self) -> Mixture:
        total = sum(s.weight for s in self.sources.values())
        if total <= 0:
            raise ValueError("sources: every weight is 0; at least one source needs a positive weight")
        if self.total is not None and abs(total - self.total) > 1e-6 * self.total:
            shown = ", ".join(f"{k}={s.weight:g}" for k, s in self.sources.items())
            raise ValueError(f"weights sum to {total:g}, but total is {self.total:g} ({shown})")
        return self


class ExtractConfig(Strict):
    """HTML -> ordered text and image slots (mmdata.html)."""

    main_content: bool = Field(True, description="walk only the main <article>/<main> container when there is one")
    srcset_width: int = Field(1024, ge=1, description="srcset: the smallest candidate at least this wide, else the largest")
    boilerplate: list[str] | None = Field(None, description="class/id words of removed blocks (a word of 5+ letters also matches as the start or end of a compound); None = built-in list")
    boilerplate_max_share: float = Field(0.5, ge=0, le=1, description="a block with this share of the container's text is never boilerplate")
    content_share: float = Field(0.8, gt=0, le=1, description="main container: descend into a child holding this share of the prose")
    max_link_share: float | None = Field(0.5, gt=0, le=1, description="a run of min_links+ links making up this share of a block's text is a link list (removed); null keeps them")
    min_links: int = Field(3, ge=2, description="links a block needs before it can be a link list")
    max_record_bytes: int = Field(10 * 2**20, ge=1, description="larger WARC records are skipped_too_large")


class ParagraphFilters(Strict):
    """OBELICS paragraph-level filters: a failing paragraph is removed from its document."""

    min_words: int | None = 4
    max_words: int | None = 1000
    max_char_repetition: float | None = Field(0.1, description="character 10-gram repetition ratio")
    max_word_repetition: float | None = Field(0.1, description="word 5-gram repetition ratio")
    max_special_chars: float | None = 0.3
    min_stopwords: float | None = 0.3
    max_flagged_words: float | None = 0.01
    min_punctuation: float | None = 0.001
    max_link_density: float | None = Field(0.5, description="share of the paragraph's characters inside links (menus)")


class DocumentFilters(Strict):
    """OBELICS document-level filters on the text left after paragraph filtering."""

    min_words: int | None = 10
    max_words: int | None = 2000
    max_char_repetition: float | None = 0.1
    max_word_repetition: float | None = 0.2
    max_special_chars: float | None = 0.275
    min_stopwords: float | None = 0.35
    max_flagged_words: float | None = 0.01
    min_punctuation: float | None = 0.03


class LanguageFilter(Strict):
    """fastText (lid.176) language ID: the languages kept and the least confidence of the top one."""

    languages: list[str] | None = Field(["en"], description="kept languages; None keeps all")
    min_score: float = Field(0.8, ge=0, le=1)


# Each use has its own default confidence, so that a recipe naming only `languages` keeps it.
class CaptionLanguage(LanguageFilter):
    """fastText language ID of a caption; DataComp keeps the top language whatever its confidence."""

    min_score: float = Field(0.0, ge=0, le=1)


class TextLanguage(LanguageFilter):
    """fastText language ID of a text-only document."""

    min_score: float = Field(0.65, ge=0, le=1)


class ImageRules(Strict):
    """OBELICS image rules: URL checks before fetching, size and aspect after."""

    formats: list[str] = ["jpg", "jpeg", "png", "webp"]
    ban_words: list[str] = ["logo", "icon", "favicon", "button", "plugin", "widget", "sprite", "avatar", "badge",
                            "banner", "pixel", "spacer", "blank", "tracking", "emoji", "advert", "ads"]
    min_declared_side: int | None = Field(32, description="drop <img> whose width/height attribute is smaller (pixels, icons)")
    min_side: int = Field(150, ge=1, description="original pixels, shorter side")
    max_side: int = Field(20_000, ge=1)
    max_aspect_ratio: float = Field(2.0, ge=1)
    min_images: int = Field(1, ge=0, description="documents with fewer (after every image filter) are dropped")
    max_images: int = Field(30, ge=1)


class MinHashConfig(Strict):
    """MinHash-LSH near-duplicate documents (datatrove's defaults)."""

    ngram: int = Field(5, ge=1, le=8, description="word n-gram shingles")
    buckets: int = Field(14, ge=1)
    hashes_per_bucket: int = Field(8, ge=1)
    seed: int = 1


class DocDedupConfig(Strict):
    """Corpus-wide dedup of documents (and, for interleaved, of images and paragraphs)."""

    same_url: bool = Field(True, description="documents with the same URL: keep the newest")
    same_images: bool = Field(True, description="documents with the same set of image URLs: keep the newest")
    minhash: MinHashConfig | None = MinHashConfig()
    max_image_url_count: int | None = Field(10, ge=1, description="image URLs seen more often across the corpus are removed")
    max_paragraph_count: int | None = Field(2, ge=1, description="paragraphs seen more often within one domain are removed")


class DocumentsConfig(Strict):
    """What the `interleaved` and `text` stages share: where pages come from, how they are read and
    extracted, the language rule, corpus-wide document dedup and fetching."""

    input: str | list[str] = Field(..., description="WARC(.gz), .html files or URL lists (.txt/.parquet/.csv/.jsonl); globs, braces, fsspec")
    input_format: Literal["auto", "warc", "html", "urls"] = "auto"
    files_per_shard: int = Field(100, ge=1, description="HTML files per shard (a WARC file is one shard)")
    urls_per_shard: int = Field(1000, ge=1, le=10_000)
    extract: ExtractConfig = ExtractConfig()
    language: LanguageFilter = LanguageFilter()
    dedup: DocDedupConfig = DocDedupConfig()
    fetch: FetchConfig = FetchConfig()


class InterleavedConfig(DocumentsConfig):
    """The `interleaved` stage: image-text documents from WARC, HTML files or page URL lists."""

    paragraphs: ParagraphFilters = ParagraphFilters()
    document: DocumentFilters = DocumentFilters()
    flagged_words: list[str] | None = Field(None, description="None = the built-in short list")
    images: ImageRules = ImageRules()
    image: ImageConfig = ImageConfig(image_size=512, resize_only_if_bigger=True)


class TextFilters(Strict):
    """Gopher quality + repetition and FineWeb line filters (datatrove's defaults)."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines: float | None = 0.9
    max_ellipsis_lines: float | None = 0.3
    min_alpha_words: float | None = 0.8
    min_gopher_stopwords: int | None = 2
    max_dup_lines: float | None = 0.3
    max_dup_paragraphs: float | None = 0.3
    max_dup_line_chars: float | None = 0.2
    max_dup_paragraph_chars: float | None = 0.2
    max_top_2gram: float | None = 0.2
    max_top_3gram: float | None = 0.18
    max_top_4gram: float | None = 0.16
    max_dup_5gram: float | None = 0.15
    max_dup_6gram: float | None = 0.14
    max_dup_7gram: float | None = 0.13
    max_dup_8gram: float | None = 0.12
    max_dup_9gram: float | None = 0.11
    max_dup_10gram: float | None = 0.10
    min_line_punct: float | None = 0.12
    max_short_lines: float | None = 0.67
    max_dup_line_char_ratio: float | None = 0.01
    max_newline_ratio: float | None = 0.3


class TextConfig(DocumentsConfig):
    """The `text` stage: text-only documents (the 10% text share) from the same readers."""

    language: TextLanguage = TextLanguage()
    max_link_density: float | None = Field(0.5, description="blocks with more of their text in links (menus, author links) are left out")
    filters: TextFilters = TextFilters()
    dedup: DocDedupConfig = DocDedupConfig(same_images=False, max_image_url_count=None, max_paragraph_count=None)


class FilterConfig(Strict):
    """The `filter` stage: measure each pair into columns, then keep/drop by these thresholds.

    Defaults are DataComp's basic filter: fastText language `en`, caption words > 2 and chars > 5,
    min(original width, height) >= 200, aspect (long/short) <= 3.
    """

    input: str | None = Field(None, description="download shard set; default the download stage's output")
    language: CaptionLanguage = Field(CaptionLanguage(), description="caption languages kept (fastText lid.176 "
                                      "codes) and the confidence below which a caption is dropped too")
    min_words: int = Field(3, ge=0, description="keep captions with at least this many words (DataComp: > 2)")
    min_chars: int = Field(6, ge=0, description="keep captions with at least this many characters (DataComp: > 5)")
    min_side: int = Field(200, ge=0, description="min(original width, height) in pixels")
    max_aspect_ratio: float = Field(3.0, ge=1, description="max(original w, h) / min(original w, h)")
    drop_uninformative: bool = Field(False, description="drop uninformative AltText; by default only scored, for recaptioning")
    uninformative_threshold: float = Field(0.5, ge=0, le=1, description="score at or above which AltText counts as uninformative")
    uninformative_phrases: list[str] = Field(
        ["click here", "read more", "image", "photo", "picture", "untitled", "thumbnail", "banner", "logo",
         "placeholder", "default", "no image", "image not found", "see more", "more info", "download",
         "icon", "screenshot", "pic", "img", "null", "undefined", "alt", "spacer"],
        description="AltText equal to one of these (case-insensitive) scores 1; containing a multi-word one, 0.7",
    )
    langid_max_chars: int | None = Field(500, ge=1, description="language ID reads at most this many characters")
    crop_scales: list[float] = Field(
        [0.92, 0.84], description="centre-crop fractions per axis also hashed, so dedup finds crops; [] = whole image only"
    )
    colour_grid: int = Field(4, ge=1, le=16, description="side of the RGB thumbnail kept per hash, for dedup's colour check")


class NearDupConfig(Strict):
    """Perceptual near-duplicates: banded search over pHashes, then an exact check of each candidate."""

    enabled: bool = True
    threshold: int = Field(8, ge=0, le=32, description="max Hamming distance between 64-bit pHashes")
    bands: int = Field(4, ge=1, le=16, description="bands per round: pairs closer than this are always found")
    rounds: int = Field(2, ge=1, description="band layouts (seeded bit permutations); more find more pairs near the threshold")
    max_colour_distance: float | None = Field(
        3.0, ge=0, description="mean absolute RGB difference (0-255) of the aligned colour thumbnails; null = not checked"
    )
    max_aspect_change: float | None = Field(
        1.25, ge=1, description="max ratio between the two images' width/height; null = not checked"
    )


class EvalSetConfig(Strict):
    """Images that must not leak into training: a table (parquet/csv/jsonl) of their hashes."""

    path: str = Field(..., description="file (fsspec) with a `sha256` and/or a `phash` column (16 hex digits or int64)")
    phash_threshold: int = Field(4, ge=0, le=32, description="a record within this Hamming distance of an eval image is dropped")


class DedupConfig(Strict):
    """The `dedup` stage: global duplicate removal across every shard, the smallest key kept."""

    input: str | None = Field(None, description="download shard set; default the download stage's output")
    filter: str | None = Field(None, description="filter sidecars (hashes, decisions); default {workdir}/filter")
    rules: list[Literal["eval_set", "url", "pair", "image", "near"]] = Field(
        ["eval_set", "url", "pair", "image", "near"], description="applied in this order, each to what the earlier ones kept"
    )
    near: NearDupConfig = NearDupConfig()
    eval_set: EvalSetConfig | None = None
    partitions: int | None = Field(None, ge=1, description="shuffle partitions; default one per input shard")


class DocScoreConfig(Strict):
    """CLIP scores for interleaved documents (MMC4): each image against its document's paragraphs."""

    input: str | None = Field(None, description="interleaved shard set; default the interleaved stage's output")
    threshold: float | None = Field(None, ge=-1, le=1, description="drop images whose best paragraph cosine is below (MMC4: 0.15 with ViT-L/14); null keeps all")
    min_words: int = Field(3, ge=1, description="text slots with fewer words (headings, labels) are not paragraphs to match")
    min_images: int = Field(1, ge=0, description="a document left with fewer images is dropped (no_related_image)")


class ClipScoreConfig(Strict):
    """The `clipscore` stage: CLIP/SigLIP cosine of image and caption, embeddings, a pool-wide decision."""

    input: str | None = Field(None, description="download shard set; default the download stage's output")
    model: str = Field("openai/clip-vit-large-patch14-336", description="Hugging Face id or local path (from_pretrained)")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: cuda -> mps -> cpu")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    batch_size: int = Field(256, ge=1, description="images per forward; halves on out-of-memory")
    decode_threads: int = Field(4, ge=1, description="threads decoding and resizing images ahead of the model")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per worker; default torch's (1 in a Dask worker)")
    overlap_decode: bool | None = Field(None, description="decode the next batches while the model runs; default: on accelerators, not on CPU")
    max_tokens: int | None = Field(None, ge=1, description="caption truncation; default the model's text length")
    embeddings: bool = Field(True, description="write {id}.emb.npz: float16 image and text embeddings with the keys")
    synthetic: bool = Field(True, description="also score `synthetic_caption` (VeCap) where the input has one")
    top_fraction: float | None = Field(0.3, gt=0, le=1, description="keep the top fraction of the whole pool by score (DataComp: 0.3)")
    threshold: float | None = Field(None, ge=-1, le=1, description="keep score >= this cosine instead (DataComp B/32: 0.25, LAION: 0.28)")
    pool_after: list[str] = Field(default_factory=list, description="stages whose kept records form the top_fraction pool; [] = all scored")
    pairs: bool = Field(True, description="score the image-caption pairs (the download shard set)")
    documents: DocScoreConfig | None = Field(None, description="also score interleaved documents, into {workdir}/clipscore_docs")

    @model_validator(mode="before")
    @classmethod
    def _one_rule(cls, data: Any) -> Any:
        # an absolute threshold replaces the default top fraction; naming both is a mistake
        if isinstance(data, dict) and data.get("threshold") is not None:
            if data.get("top_fraction") is not None:
                raise ValueError("set top_fraction or threshold, not both")
            data = {**data, "top_fraction": None}
        return data

    @model_validator(mode="after")
    def _scores_something(self) -> ClipScoreConfig:
        if not self.pairs and self.documents is None:
            raise ValueError("pairs: false and no documents section: nothing to score")
        return self


VECAP_PROMPT = "Describe the image concisely, less than 20 words."  # VeCap's "veclip" prompt

FUSE_SYSTEM = "You write captions that train vision-language models."
# mmdata's own wording of the CapsFusion / VeCap fusion idea. Bump `prompt_version` on any change.
FUSE_PROMPT = (
    "Two texts describe the same image.\n"
    "AltText, from the web page: it may name real people, places, brands, titles or the text written in the "
    "image, but it can be noisy, incomplete or about something else.\n"
    "AltText: {alttext}\n"
    "Description, written from the image alone: reliable about what is visible, but it knows no names.\n"
    "Description: {description}\n"
    "Write one caption of at most 30 words that keeps the visual facts of the description and the names and "
    "specifics of the AltText that fit them. Merge them into one fluent sentence instead of putting one after the "
    "other, and leave out AltText that does not fit the image. Reply with the caption only."
)


class GuardConfig(Strict):
    """Checks on every generated text. A description that fails one has no synthetic caption; a fused
    caption that fails one falls back to the description. Either way the reason is recorded."""

    min_words: int = Field(2, ge=1, description="fewer words (letters-bearing tokens) is `empty`")
    max_words: int = Field(60, ge=1, description="more words is `too_long` (a caption that ran on)")
    max_repeat: int = Field(3, ge=2, description="the same word this many times in a row is `repeated`")
    min_distinct: float = Field(0.4, ge=0, le=1, description="distinct/total words below this (8+ words) is `repeated` (a loop)")
    echo_words: int = Field(5, ge=2, description="this many consecutive words of the prompt's own instructions is `echo`")


class DescribeConfig(Strict):
    """The captioner: any Hugging Face image-to-text or vision-language model (BLIP, BLIP-2, Florence-2,
    SmolVLM, LLaVA, Qwen2-VL, ...) describes the image alone, greedily, in batches."""

    PACE = frozenset({"batch_size", "decode_threads", "overlap_decode", "torch_threads"})

    model: str = Field("Qwen/Qwen2-VL-2B-Instruct", description="Hugging Face id or local path (from_pretrained)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit); recorded with every caption")
    trust_remote_code: bool = False
    prompt: str = Field(VECAP_PROMPT, description="instruction for chat models (VeCap's by default); "
                        "a prefix the caption continues for prompt_style prefix")
    prompt_style: Literal["auto", "chat", "prefix", "none"] = Field(
        "auto", description="auto: chat when the processor has a chat template, else none (unconditional, BLIP/VED)")
    max_new_tokens: int = Field(32, ge=1, le=1024)
    candidates: int = Field(1, ge=1, le=64, description="1: greedy. N: N sampled descriptions, the CLIP model keeps "
                            "the one closest to the image (LAION-COCO: 40 -> 1)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature when candidates > 1")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling when candidates > 1")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: this worker's GPU -> mps -> cpu")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    batch_size: int = Field(32, ge=1, description="images per generate call; halves on out-of-memory")
    decode_threads: int = Field(4, ge=1, description="threads decoding and preprocessing images ahead of the model")
    overlap_decode: bool | None = Field(None, description="prepare the next batches while the model runs; "
                                        "default: on accelerators, not on CPU")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per worker; default torch's (1 in a Dask worker)")


class FuseConfig(Strict):
    """Fusion of the AltText with the description: a chat LLM when `model` is set, else rule-based
    (the AltText's names and entities joined to the description)."""

    PACE = frozenset({"batch_size"})

    model: str | None = Field(None, description="Hugging Face causal LM with a chat template (id or local path); "
                              "null: rule-based fusion")
    revision: str | None = None
    trust_remote_code: bool = False
    prompt_version: str = Field("mmdata-fuse-v1", description="recorded with every caption; change it with the prompt")
    system: str | None = Field(FUSE_SYSTEM, description="system message; null for models without a system role")
    prompt: str = Field(FUSE_PROMPT, description="user message; {alttext} and {description} are filled in")
    max_new_tokens: int = Field(64, ge=1, le=1024)
    max_input_tokens: int = Field(256, ge=16, description="longer AltTexts are cut to fit (CapsFusion: 256)")
    batch_size: int = Field(32, ge=1, description="prompts per generate call; halves on out-of-memory")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    rule_template: str = Field("{description} ({entities})", description="rule-based fusion: {description}, {entities}")
    max_entities: int = Field(4, ge=1, description="rule-based fusion: names kept from the AltText, in order")


class RecaptionConfig(Strict):
    """The `recaption` stage: VeCap synthetic captions beside the AltText (never replacing it)."""

    input: str | None = Field(None, description="download shard set; default the download stage's output")
    target: Literal["all", "uninformative", "low_clip", "fraction"] = Field(
        "all", description="which pool records: all; uninformative AltText first (the filter's score); lowest CLIP "
        "score first (the clipscore stage's); a seeded random fraction")
    fraction: float = Field(1.0, gt=0, le=1, description="at most this share of the pool is recaptioned")
    threshold: float | None = Field(
        None, description="uninformative: only scores >= it; low_clip: only scores < it. null: rank the pool and take "
        "the top `fraction`")
    pool_after: list[str] = Field(["filter", "dedup", "clipscore"], description="stages whose kept records form the "
                                  "pool (spend the captioner on what trains); [] = every downloaded image")
    seed: int | None = Field(None, description="random fraction, tie-breaks and sampling; default the recipe's seed")
    clip_model: str | None = Field(None, description="CLIP/SigLIP that scores the captions and ranks candidates; "
                                   "default the clipscore section's model")
    score: bool = Field(True, description="score AltText and synthetic caption against the image (alt_score, synthetic_score)")
    describe: DescribeConfig = DescribeConfig()
    fuse: FuseConfig = FuseConfig()
    guards: GuardConfig = GuardConfig()

    @model_validator(mode="after")
    def _target(self) -> RecaptionConfig:
        if self.target == "all" and self.fraction != 1:
            raise ValueError("target all takes the whole pool; set target: fraction (or uninformative/low_clip) "
                             "to recaption part of it")
        if self.threshold is not None and self.target not in ("uninformative", "low_clip"):
            raise ValueError("threshold applies to target uninformative or low_clip")
        return self


T = TypeVar("T", bound=BaseModel)


class Pipeline(Strict):
    """A whole recipe. Stage sections are optional; running a stage without one is an error."""

    name: str = "pipeline"
    workdir: str = Field(..., description="root (local path or fsspec URL) of every stage's output")
    seed: int = 0
    stages: list[str] = Field(default_factory=list, description="what `mmdata run` executes, in order")
    engine: EngineConfig = EngineConfig()
    check: CheckConfig | None = None
    clipscore: ClipScoreConfig | None = None
    recaption: RecaptionConfig | None = None
    filter: FilterConfig | None = None
    dedup: DedupConfig | None = None
    interleaved: InterleavedConfig | None = None
    text: TextConfig | None = None
    shards: ShardsConfig | None = None
    download: DownloadConfig | None = None

    def stage_dir(self, stage: str) -> str:
        return f"{self.workdir.rstrip('/')}/{stage}"

    def output(self, stage: str) -> str:
        """Where `stage` writes: its section's `output` when set, else `{workdir}/{stage}`."""
        section = getattr(self, stage, None) if stage in type(self).model_fields else None
        return getattr(section, "output", None) or self.stage_dir(stage)

    def section(self, stage: str) -> Any:
        attr = stage.replace("-", "_")
        value = getattr(self, attr, None) if attr in type(self).model_fields else None
        if value is None:
            raise ConfigError(f"recipe '{self.name}' has no '{stage}' section")
        return value


# old spellings of a threshold -> the one it has now, so a recipe that still uses one is told where it went
RENAMED = {"langs": "language.languages", "min_lang_score": "language.min_score", "max_aspect": "max_aspect_ratio",
           "min_image_size": "min_side"}


class ConfigError(Exception):
    """A recipe problem, already phrased for the user (one line per problem)."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--set engine.n_workers=4 filter.min_side=256`: values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.path=value")
        path, raw = item.split("=", 1)
        node = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        new = RENAMED.get(str(err["loc"][-1]))
        return f"{loc}: unknown key (renamed: use `{new}`)" if new else f"{loc}: unknown key (not a field of this section)"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{loc}: {err['msg']}{shown}"


def parse(model: type[T], data: Any, source: str) -> T:
    """Validate already-loaded data; errors name `source` and each field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{source}: {_describe(err)}" for err in e.errors())) from None


def load(path: str | os.PathLike, model: type[T] = Pipeline, overrides: list[str] = ()) -> T:  # type: ignore[assignment]
    """Read a YAML recipe into `model`, with env expansion and `--set` overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such recipe file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    data = _expand_env(data, str(p))
    return parse(model, data, str(p))
