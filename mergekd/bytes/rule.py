"""Which token → byte rule a teacher's targets use: the fast canonical path, or the covering (exact) sum.

Why a named, parsed rule: the rule is a property of the *targets* — two caches, two runs or two scores built with
different rules are not comparable — so it must travel as one short string through spec strings
(``smollm2-135m?byte_rule=exact:K=8``), command-line flags (``--byte-rule exact:K=8``), cache manifests and
reports, and be validated once with an error that says how to write it.

Grammar::

    canonical                      the fast rule (mergekd.bytes.convert): one canonical tokenization, windowed
    exact                          covering sum with the default beam (K=8)
    exact:K=8                      beam of K hypotheses per byte position (``K=none``: no beam, the exact sum)
    exact:K=8;prune=1e-6           options separated by ';' (or ',' outside a --teachers list)
    exact:K=none;max_states=4096   the unbounded sum refuses more than max_states live hypotheses per byte

Beam 8 is the default because on real teachers it is indistinguishable from beam 128–256 (mean JSD below
1e-10 bits on a test sentence, see :mod:`mergekd.bytes.exact`), while the unbounded sum grows exponentially.
The covering search costs ~0.1–0.3 s per byte on 2 CPU cores: a rule for short texts and ablations, not for
bulk targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

# The identity of the targets this byte core computes. Bump RULE_VERSION in any commit that changes a target
# row (the rule, the windowing, the handling of specials or normalisers, the float path): caches, scores and
# runs record it, and a cache made under another version is refused instead of being mixed with new targets.
RULE_NAME = "canonical-path"
RULE_VERSION = 1

DEFAULT_BEAM = 8
DEFAULT_MAX_STATES = 1024
_KINDS = ("canonical", "exact")
_HELP = "write canonical, exact, or exact:K=8;prune=0;max_states=1024 (K=none for the unbounded sum)"


@dataclass(frozen=True)
class ByteRule:
    """A parsed rule; :meth:`label` is its canonical string (equal rules have equal labels)."""

    kind: Literal["canonical", "exact"] = "canonical"
    beam: int | None = DEFAULT_BEAM
    prune: float = 0.0
    max_states: int | None = DEFAULT_MAX_STATES

    @property
    def is_exact(self) -> bool:
        return self.kind == "exact"

    def label(self) -> str:
        if not self.is_exact:
            return "canonical"
        beam = "none" if self.beam is None else str(self.beam)
        parts = [f"K={beam}"]
        if self.prune:
            parts.append(f"prune={self.prune:g}")
        if self.max_states != DEFAULT_MAX_STATES:
            parts.append(f"max_states={'none' if self.max_states is None else self.max_states}")
        return "exact:" + ";".join(parts)

    def __str__(self) -> str:
        return self.label()


def _int_or_none(key: str, value: str, where: str, minimum: int) -> int | None:
    if value.strip().lower() in ("none", "inf"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where}: {key}={value!r} is not an integer; {_HELP}") from None
    if number < minimum:
        raise ConfigError(f"{where}: {key}={number} must be ≥ {minimum} (or none); {_HELP}")
    return number


def parse_byte_rule(text: str | ByteRule | None, where: str = "--byte-rule") -> ByteRule:
    """``"exact:K=8;prune=1e-6"`` → :class:`ByteRule`; unknown names or options raise ConfigError naming the fix."""
    if isinstance(text, ByteRule):
        return text
    if text is None or not str(text).strip():
        return ByteRule()
    raw = str(text).strip()
    name, _, opts = raw.partition(":")
    name = name.strip().lower()
    if name in ("canonical", "canonical-path", "fast"):
        if opts.strip():
            raise ConfigError(f"{where}: the canonical rule takes no options (got {opts!r}); {_HELP}")
        return ByteRule()
    if name not in ("exact", "cover", "covering"):
        from difflib import get_close_matches

        close = get_close_matches(name, _KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown byte rule {name!r}{hint}; {_HELP}")
    beam: int | None = DEFAULT_BEAM
    prune = 0.0
    max_states: int | None = DEFAULT_MAX_STATES
    for item in opts.replace(",", ";").split(";"):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ConfigError(f"{where}: option {item!r} has no value; {_HELP}")
        if key in ("k", "beam"):
            beam = _int_or_none("K", value, where, 1)
        elif key == "prune":
            try:
                prune = float(value)
            except ValueError:
                raise ConfigError(f"{where}: prune={value!r} is not a number; {_HELP}") from None
            if not (0.0 <= prune < 1.0) or math.isnan(prune):
                raise ConfigError(f"{where}: prune={value} must be in [0, 1); {_HELP}")
        elif key == "max_states":
            max_states = _int_or_none("max_states", value, where, 1)
        else:
            raise ConfigError(f"{where}: unknown option {key!r} of the exact rule (options: K, prune, max_states); "
                              f"{_HELP}")
    return ByteRule(kind="exact", beam=beam, prune=prune, max_states=max_states)
