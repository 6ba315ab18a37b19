"""A tiny, locally built CLIP tokenizer for the embedded Stable-Diffusion teacher.

The teacher's text encoder is trained from scratch on a closed caption vocabulary, so it needs a
tokenizer in which every vocabulary word is exactly one token, yet it has to be a genuine
``transformers.CLIPTokenizer`` so that ``diffusers.StableDiffusionPipeline.from_pretrained`` can
load it from a ``tokenizer/`` subfolder like any SD1.5 checkpoint, without a hub download.

We therefore write the files a CLIP tokenizer is made of ourselves:

* the base vocabulary: GPT-2's 256 byte->unicode characters, then the same 256 with the CLIP
  end-of-word suffix ``</w>`` (so any text still tokenizes, falling back to byte-level pieces);
* one entry per merge (the merged string, unless an earlier merge already made it), in order;
* ``<|startoftext|>`` and ``<|endoftext|>`` last, as in OpenAI's CLIP vocabulary;
* ``merges.txt``: the ``#version: 0.2`` header, then one ``"a b"`` merge per line, by priority.

For each vocabulary word the merges that build it are added left to right (``r e`` -> ``re``, then
``re d</w>`` -> ``red</w>``). Everything is a pure function of the word set, so two builds are
byte-identical.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MERGES_HEADER = "#version: 0.2"
DEFAULT_MAX_LENGTH = 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-unicode table, in the order CLIP's base vocabulary lists it.

    Bytes that are already printable, non-space characters map to themselves; the remaining 68
    (control characters, space, a few Latin-1 gaps) are shifted to code points 256, 257, ... so
    that no token ever contains whitespace (merges.txt separates the two halves with a space).
    The returned dict is ordered printable bytes first, then the shifted ones, because that is the
    order of ids 0..255 in CLIP's vocab.json.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _word_symbols(words: Iterable[str]) -> list[list[str]]:
    """Each distinct word as its initial BPE symbols (byte characters, ``</w>`` on the last one).

    The word is passed through the normalizer and pre-tokenizer of an empty ``CLIPTokenizer``, i.e.
    exactly the code that will process captions at run time, so lowercasing, NFC and the byte
    mapping can never disagree with what we build here. Words are returned sorted so the merge
    order does not depend on the order (or duplicates) of the input.
    """
    bare = CLIPTokenizer().backend_tokenizer
    pretokens: set[str] = set()
    for word in words:
        if word in (BOS_TOKEN, EOS_TOKEN):
            raise ValueError(f"{word!r} is a special token, not a vocabulary word")
        pieces = bare.pre_tokenizer.pre_tokenize_str(bare.normalizer.normalize_str(word))
        if len(pieces) != 1:
            # CLIP's regex splits text before BPE runs, so a word it splits (or an empty one)
            # can never come out as a single token, whatever merges we add.
            raise ValueError(
                f"word {word!r} is split by CLIP's pre-tokenizer into {[p for p, _ in pieces]}; "
                "each vocabulary word must be a single pre-token (letters only, digits are single "
                "characters, punctuation runs stand alone)"
            )
        pretokens.add(pieces[0][0])
    return [[*w[:-1], w[-1] + END_OF_WORD] for w in sorted(pretokens)]


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Run BPE on one word: repeatedly merge the lowest-ranked adjacent pair, leftmost first.

    This is the rule the ``tokenizers`` BPE model follows (its heap is ordered by rank, then by
    position); the finished tokenizer is still checked against the real model afterwards.
    """
    symbols = list(symbols)
    while len(symbols) > 1:
        best = None
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (token -> id) and the ordered merges that make each word one token."""
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for symbols in _word_symbols(words):
        # Merges added for earlier words may fire inside this one and leave it in pieces the plain
        # left-to-right chain no longer fits (e.g. "r e" ranked before "g r" breaks "green"). So we
        # take whatever the current merges make of the word and join its first two pieces with a
        # new, lowest-priority merge, until it is one token. Because each new merge ranks after
        # all existing ones, it only acts once the old ones are exhausted: earlier words stay one
        # token, and every round removes at least one piece from this word. Without interference
        # this is exactly the left-to-right chain.
        while len(pieces := _apply_merges(symbols, ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            merged = pair[0] + pair[1]
            if merged not in known:
                known.add(merged)
                tokens.append(merged)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _vocab_json(vocab: dict[str, int]) -> str:
    """vocab.json text: ids ascending, UTF-8, fixed formatting (so builds are byte-identical)."""
    return json.dumps(vocab, ensure_ascii=False, indent=None) + "\n"


def _merges_txt(merges: list[tuple[str, str]]) -> str:
    """merges.txt text: the version header, then one ``"a b"`` merge per line in priority order."""
    return "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n"


def _check_single_tokens(tokenizer: CLIPTokenizer, words: list[str]) -> None:
    """Fail loudly if the real BPE model splits any vocabulary word (our simulation disagreed)."""
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise RuntimeError(f"vocabulary word {word!r} tokenizes into {pieces}, not one token")


def build_clip_tokenizer(
    words: Iterable[str], model_max_length: int = DEFAULT_MAX_LENGTH
) -> CLIPTokenizer:
    """Build a byte-level BPE ``CLIPTokenizer`` in which every word of ``words`` is a single token.

    Args:
        words: the vocabulary. Each entry must be one CLIP pre-token: a run of letters, a single
            digit, or a run of punctuation (e.g. ``","``). Case is ignored, as CLIP lowercases.
            Order and duplicates do not matter.
        model_max_length: sequence length used for ``padding="max_length"`` and truncation,
            BOS and EOS included.

    Returns:
        An in-memory ``transformers.CLIPTokenizer`` with SD1.5's special tokens: bos
        ``<|startoftext|>``, eos/pad/unk ``<|endoftext|>``. Text outside the vocabulary still
        tokenizes into byte-level pieces. Raises ``ValueError`` for a word CLIP's pre-tokenizer
        would split.
    """
    return _build(list(words), model_max_length)[0]


def _build(
    words: list[str], model_max_length: int
) -> tuple[CLIPTokenizer, dict[str, int], list[tuple[str, str]]]:
    """The checked tokenizer together with the vocab and merges it was made from."""
    vocab, merges = _vocab_and_merges(words)
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )
    _check_single_tokens(tokenizer, words)
    return tokenizer, vocab, merges


def save_clip_tokenizer(
    words: Iterable[str], out_dir: str | os.PathLike, model_max_length: int = DEFAULT_MAX_LENGTH
) -> Path:
    """Build the tokenizer for ``words`` and save it to ``out_dir`` (e.g. ``<pipeline>/tokenizer``).

    Writes what ``save_pretrained`` produces (``tokenizer.json``, ``tokenizer_config.json``) plus
    the classic ``vocab.json`` and ``merges.txt`` that SD1.5 checkpoints ship, so the folder loads
    with ``CLIPTokenizer.from_pretrained`` / ``AutoTokenizer.from_pretrained`` offline, including
    from transformers versions or tools that read only the vocab/merges pair.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab, merges = _build(list(words), model_max_length)
    tokenizer.save_pretrained(out)
    # The tokenizers backend's save_pretrained writes tokenizer.json only; add the vocab/merges
    # pair ourselves. newline="\n" keeps the files byte-identical across platforms.
    (out / "vocab.json").write_text(_vocab_json(vocab), encoding="utf-8", newline="\n")
    (out / "merges.txt").write_text(_merges_txt(merges), encoding="utf-8", newline="\n")
    return out
