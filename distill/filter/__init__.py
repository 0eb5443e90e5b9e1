"""The filter stage: every teacher sample checked, each rejection with its reason (see ``stage`` for the order).

Modules, one job each: ``reader`` (tolerant reading of the generations store), ``checks`` (structure: truncation,
think format, token caps), ``quality`` (language mixing, long paragraphs, code blocks, repetition), ``worker``
(the per-sample work done in verifier processes), ``pool`` (a process pool with a hard per-item deadline),
``dedup`` (duplicate prompts and samples), ``benchmarks`` + ``decontam`` (benchmark n-gram overlap),
``judge`` (optional LLM judge), ``select`` (pass rates and k-per-prompt selection), ``engine`` (pass 1: one
verdict per sample, streaming), ``plots`` (the report PNG) and ``stage`` (``filter_store``: both passes, the
outputs and the counts).
"""
