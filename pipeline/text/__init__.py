"""Caption → sentences → phrases (spaCy), with the lexemes grounding links them by.

Modules: ``config`` (TextConfig, imports nothing heavy: the data-prep driver reads it),
``parser`` (CaptionParser, the batched parser a worker holds), ``nlp`` (loading spaCy),
``hierarchy``, ``phrases`` (our phrase rules), ``bclip_rules`` (β-CLIP's, ``text.rules: bclip``),
``lexeme``; ``encoding`` (a file's text encoding from its byte-order mark: light, readers use it).
"""
