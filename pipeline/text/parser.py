"""The batched caption parser a text worker (e.g. a Ray actor) holds: spaCy loads once."""

from __future__ import annotations

import dataclasses

import spacy

from pipeline.text.config import TextConfig
from pipeline.text.hierarchy import TextHierarchy, build_hierarchy
from pipeline.text.lexeme import Lexeme, label_lexeme
from pipeline.text.nlp import load_nlp


class CaptionParser:
    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.model = load_nlp(cfg)

    def parse(self, captions: list[str]) -> list[TextHierarchy]:
        docs = self.model.nlp.pipe(captions, batch_size=self.cfg.batch_size)
        return [build_hierarchy(doc, self.cfg) for doc in docs]

    def lexemes(self, labels: list[str]) -> list[Lexeme]:
        """Annotation labels → lexemes, with the same model as the captions' phrases."""
        return [label_lexeme(doc) for doc in self.model.nlp.pipe(labels, batch_size=self.cfg.batch_size)]

    def provenance(self) -> dict:
        """What the manifest records to reproduce the text stage."""
        nlp = self.model.nlp
        return {"model": self.model.name, "model_version": self.model.version,
                "spacy_version": spacy.__version__, "pipes": list(nlp.pipe_names),
                "disabled_pipes": list(nlp.disabled), "config": dataclasses.asdict(self.cfg)}
