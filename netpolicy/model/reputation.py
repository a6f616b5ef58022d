"""The host's reputation score from its DNS-list answers (SPEC.md section 7).

The score is the sum of the weights of the sources that list the host, clamped to [-10, 10]
like the appliance's SBRS; 0 when no source lists it, None when every source failed (timed out,
SERVFAIL), which ``score[none]`` matches. A failed source among answering ones counts as not
listing: one slow list must not turn a known sender into an unknown one.

The resolver fetches the answers (in parallel, under one timeout) and trace takes them from
``--listed``; both compute the score here, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from netpolicy.model.entries import AnswerPattern
from netpolicy.model.policy import Reputation

SCORE_MIN, SCORE_MAX = -10.0, 10.0


def reputation_score(reputation: Reputation, listed: Callable[[str, AnswerPattern], bool | None]) -> float | None:
    """``listed(zone, pattern)``: True (listed), False (not listed) or None (the lookup failed)."""
    total = 0.0
    answered = False
    for source in reputation.sources:
        verdict = listed(source.dnslist, source.pattern)
        if verdict is None:
            continue
        answered = True
        if verdict:
            total += source.weight
    if not answered:
        return None
    return round(min(SCORE_MAX, max(SCORE_MIN, total)), 1)
