"""Deterministic output: how many tokens a request generates, why it stops, and their text.

* The seed of a request is its ``seed`` field when given, else a BLAKE2b hash of its prompt text
  (the rendered prompt for chat), so the same request always gets the same answer.
* "EOS" point: without ``ignore_eos`` the model "emits EOS" as token number
  ``1 + seed % EOS_SPAN`` (1..512), but never before ``min_tokens`` tokens are out (vLLM suppresses
  EOS until then). If that point comes at or before ``max_tokens`` the request finishes with
  ``stop`` after that many tokens (the EOS token is counted in ``completion_tokens`` and has no
  text, as in vLLM); otherwise it runs to ``max_tokens`` and finishes with ``length``.
* Text: token ``i`` is a space and a word of at most 4 letters from ``WORDS``, picked by a
  SplitMix64 hash of ``(seed, i)``; under the tokenizer stand-in each such word is one token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]

EOS_SPAN = 512
_MASK64 = (1 << 64) - 1

_WORD_SOURCE = """
    the of and to in is it you that he was for on are as with his they at be this have from
    or one had by word but not what all were we when your can said there use an each which she
    do how their if will up other about out many then them these so some her would make like
    him into time has look two more write go see way been call who oil its now find long down
    day did get come made may part over new sound take only work know year live me back
    give most very after thing our just name good man think say great help low line turn
    cause much mean move same tell boy does set want air well also play small end put home
    read hand port large add even land here must big high such act why ask men went
    kind off need house try us again near self earth father head stand own page
    should answer found study still learn plant cover food sun four thought let keep eye never
    last door tree city cross since hard start might story saw far sea draw left late run
    while press close night real life few stop open seem next white begin got walk ease paper
    often always music those both mark book letter until mile river car feet care second group
    carry took rain eat room friend began idea fish north once base hear horse cut sure watch
    color face wood main enough plain girl usual young ready above ever red list though feel
    talk bird soon body dog song door
    """
#: The vocabulary of generated words: lower-case, at most 4 letters (one token each).
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(w.lower() for w in _WORD_SOURCE.split() if len(w) <= 4)
)
_N_WORDS = len(WORDS)
_TOKEN_TEXT = tuple(" " + w for w in WORDS)


def seed_of(prompt_text: str, seed: int | None = None) -> int:
    """The request's seed: its own ``seed`` if given, else a hash of its prompt."""
    if seed is not None:
        return seed & _MASK64
    return int.from_bytes(hashlib.blake2b(prompt_text.encode(), digest_size=8).digest(), "little")


def eos_position(seed: int, min_tokens: int = 0) -> int:
    """The 1-based output position at which this request "emits EOS"."""
    return max(1 + _mix(seed ^ 0xE05) % EOS_SPAN, min_tokens + 1)


@dataclass(frozen=True, slots=True)
class OutputPlan:
    tokens: int  # completion tokens, including the EOS token when the reason is "stop"
    finish_reason: FinishReason


def plan_output(
    seed: int, max_tokens: int, min_tokens: int = 0, ignore_eos: bool = False
) -> OutputPlan:
    """How many tokens the request generates and why it stops."""
    if not ignore_eos:
        eos = eos_position(seed, min_tokens)
        if eos <= max_tokens:
            return OutputPlan(eos, "stop")
    return OutputPlan(max_tokens, "length")


def _mix(x: int) -> int:
    """SplitMix64 finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def token_text(seed: int, index: int, plan: OutputPlan) -> str:
    """Text of output token ``index`` (0-based); the EOS token of a ``stop`` plan is empty."""
    if plan.finish_reason == "stop" and index == plan.tokens - 1:
        return ""
    return _TOKEN_TEXT[_mix(seed + index) % _N_WORDS]


def full_text(seed: int, plan: OutputPlan) -> str:
    return "".join(token_text(seed, i, plan) for i in range(plan.tokens))
