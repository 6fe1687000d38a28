"""Evaluator plugins: FTibBench and text tasks, answer extraction, metrics, reports.

Modules:
    extract     -- reply -> answer (deterministic rules, optional judge, no guessing)
    metrics     -- the formulas (CircularEval, MME acc+, POPE, ROUGE-L ...), model-free
    text        -- Tibetan-syllable tokenisation for BLEU/chrF/ROUGE-L
    loaders     -- benchmark items from the original file formats (via ftib.data.loaders)
    generate    -- the ``Generator`` interface and its transformers implementation
    base, textgen -- shared anatomy of the benchmark and text-task evaluators
    mmbench, mme, pope, binary_vqa, corevqa, translation, headline, alignment_tax
                -- the evaluator plugins (entry-point group ``ftib.evaluators``)
    similarity  -- sentence-embedding similarity from a local model
    report      -- Markdown report and scores-per-stage plot
    cli         -- ``ftib eval``

See ``docs/evals.md``.
"""
