"""Caption → sentences → phrases (spaCy), with the lexemes grounding links them by."""

from pipeline.text.config import TextConfig
from pipeline.text.hierarchy import TextHierarchy, build_hierarchy
from pipeline.text.lexeme import Lexeme, label_lexeme, lexeme_of
from pipeline.text.nlp import LoadedModel, ModelUnavailable, load_nlp
from pipeline.text.parser import CaptionParser

__all__ = ["CaptionParser", "Lexeme", "LoadedModel", "ModelUnavailable", "TextConfig", "TextHierarchy",
           "build_hierarchy", "label_lexeme", "lexeme_of", "load_nlp"]
