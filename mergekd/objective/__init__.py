"""The training objective as a list of registered terms.

    from mergekd.objective import TERMS, ObjectiveTerm, build_terms
    terms = build_terms([{"term": "token_ce"}, {"term": "trie_kl", "weight": 3, "divergence": "forward-kl"}])

Each term is one file that registers itself in :data:`TERMS` (decorator; plugins through the entry-point group
``mergekd.objective_terms``), declares its options as a pydantic model and what it needs (teacher rows, the byte
head, the student's byte trie). The distillation loop, the config checks, metrics and the model card read the
term list; none of them knows a term by name.
"""

from .base import TERMS, ObjectiveTerm, TermOptions, build_term, build_terms, describe_terms
from .context import StepContext

# built-in terms register on import
from . import byte_ce, head_kl, token_ce, trie_kl  # noqa: E402,F401  isort: skip

__all__ = ["TERMS", "ObjectiveTerm", "StepContext", "TermOptions", "build_term", "build_terms", "describe_terms"]
