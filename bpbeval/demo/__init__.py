"""``make demo``: a corpus, two tokenizers, two models with equal budgets, one comparison.

Read :mod:`bpbeval.demo.pipeline` top to bottom as a recipe; :mod:`bpbeval.demo.corpus`
builds the data and :mod:`bpbeval.demo.train` holds the training loop.
"""
