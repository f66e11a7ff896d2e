"""A deterministic stand-in for a Llama-3-style tokenizer (no vocabulary file, no model download).

Counting rules, chosen to land near a BPE tokenizer's counts on English text:

* text is split by the regex ``\\w+|[^\\w\\s]``: runs of word characters, and every other
  non-space character on its own; whitespace is dropped (a real BPE folds it into the next piece);
* a word longer than 4 characters is split every 4 characters (``"tokenizer"`` -> ``toke``,
  ``nize``, ``r``), so its cost grows with its length as BPE's does;
* a completions prompt gains one BOS token (``<|begin_of_text|>``), as Llama tokenizers add it;
* a chat prompt is rendered with a fixed Llama-3 template: BOS, then per message
  ``<|start_header_id|>``, the role, ``<|end_header_id|>``, the content pieces and ``<|eot_id|>``
  (4 tokens of overhead per message), then the generation prompt ``<|start_header_id|>``,
  ``assistant``, ``<|end_header_id|>`` (3 tokens).

Token ids are a CRC32 of the piece modulo the ordinary-token range, so equal pieces get equal ids;
the special tokens have Llama-3's ids.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence

PIECE_RE = re.compile(r"\w+|[^\w\s]")
MAX_PIECE_CHARS = 4

BOS = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_IDS = {BOS: 128_000, START_HEADER: 128_006, END_HEADER: 128_007, EOT: 128_009}
ORDINARY_VOCAB = 128_000  # ids 0..127999 are ordinary pieces
VOCAB_SIZE = 128_256

#: Tokens a chat message adds around its content: start/role/end header and end-of-turn.
CHAT_MESSAGE_OVERHEAD = 4
#: Tokens of the assistant generation prompt that ends every chat prompt.
CHAT_GENERATION_PROMPT = 3


def pieces(text: str) -> list[str]:
    """The token strings of ``text`` (no special tokens)."""
    out: list[str] = []
    for m in PIECE_RE.finditer(text):
        word = m.group()
        if len(word) <= MAX_PIECE_CHARS:
            out.append(word)
        else:
            out.extend(word[i : i + MAX_PIECE_CHARS] for i in range(0, len(word), MAX_PIECE_CHARS))
    return out


def count(text: str) -> int:
    """Number of tokens in ``text`` (no special tokens); equals ``len(pieces(text))``."""
    return sum(
        (len(m.group()) + MAX_PIECE_CHARS - 1) // MAX_PIECE_CHARS for m in PIECE_RE.finditer(text)
    )


def token_id(piece: str) -> int:
    special = SPECIAL_IDS.get(piece)
    if special is not None:
        return special
    return zlib.crc32(piece.encode()) % ORDINARY_VOCAB


def encode(strs: Iterable[str]) -> list[int]:
    return [token_id(p) for p in strs]


def completion_pieces(prompt: str, add_special_tokens: bool = True) -> list[str]:
    return ([BOS] if add_special_tokens else []) + pieces(prompt)


def completion_prompt_tokens(prompt: str, add_special_tokens: bool = True) -> int:
    """Prompt length of a completions request."""
    return (1 if add_special_tokens else 0) + count(prompt)


def chat_pieces(
    messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True
) -> list[str]:
    """The rendered chat template of ``(role, text)`` messages, as token strings."""
    out = [BOS]
    for role, text in messages:
        out.append(START_HEADER)
        out.append(role)
        out.append(END_HEADER)
        out.extend(pieces(text))
        out.append(EOT)
    if add_generation_prompt:
        out.extend((START_HEADER, "assistant", END_HEADER))
    return out


def chat_prompt_tokens(
    messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True
) -> int:
    """Prompt length of a chat request; equals ``len(chat_pieces(messages))``."""
    total = 1 + sum(CHAT_MESSAGE_OVERHEAD + count(text) for _, text in messages)
    return total + (CHAT_GENERATION_PROMPT if add_generation_prompt else 0)
