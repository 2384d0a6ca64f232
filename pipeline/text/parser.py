"""The batched caption parser a text worker (e.g. a Ray actor) holds: spaCy loads once."""

from __future__ import annotations

import dataclasses

import spacy

from pipeline.text.bclip_rules import BclipRules
from pipeline.text.config import TextConfig
from pipeline.text.hierarchy import TextHierarchy, build_hierarchy
from pipeline.text.lexeme import Lexeme, label_lexeme
from pipeline.text.nlp import load_nlp

LABEL_CACHE = 100_000  # label lexemes remembered per parser; box labels repeat (COCO has 80)


class CaptionParser:
    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.model = load_nlp(cfg)
        self.bclip = BclipRules(self.model.nlp, cfg) if cfg.rules == "bclip" else None
        self._label_lexemes: dict[str, Lexeme] = {}

    def parse(self, captions: list[str]) -> list[TextHierarchy]:
        """Sentences and phrases by ``cfg.rules``: ours, or β-CLIP's (``bclip_rules``)."""
        if self.bclip is not None:
            return self.bclip.parse(captions)
        docs = self.model.nlp.pipe(captions, batch_size=self.cfg.batch_size)
        return [build_hierarchy(doc, self.cfg) for doc in docs]

    def lexemes(self, labels: list[str]) -> list[Lexeme]:
        """Annotation labels → lexemes, with the same model as the captions' phrases. A label is
        parsed alone, so its lexeme is the same every time: each is parsed once per parser."""
        if len(self._label_lexemes) > LABEL_CACHE:
            self._label_lexemes.clear()
        new = list(dict.fromkeys(label for label in labels if label not in self._label_lexemes))
        for label, doc in zip(new, self.model.nlp.pipe(new, batch_size=self.cfg.batch_size)):
            self._label_lexemes[label] = label_lexeme(doc)
        return [self._label_lexemes[label] for label in labels]

    def provenance(self) -> dict:
        """What the manifest records to reproduce the text stage."""
        nlp = self.model.nlp
        return {
            "model": self.model.name,
            "model_version": self.model.version,
            "models_not_loadable": list(self.model.passed_over),
            "spacy_version": spacy.__version__,
            "pipes": list(nlp.pipe_names),
            "disabled_pipes": list(nlp.disabled),
            "config": dataclasses.asdict(self.cfg),
        }
