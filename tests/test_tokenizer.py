"""The locally built CLIP tokenizer: one token per caption word, byte fallback, offline reload."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from transformers import CLIPTokenizer

from fewstep.distill.data.procedural import all_captions, vocabulary
from fewstep.pipelines.tokenizer import build_clip_tokenizer, save_clip_tokenizer

WORDS = vocabulary() + [","]
MAX_LEN = 16


def _normalise(text: str) -> str:
    """CLIP's decoder puts a space before punctuation ("left , gray"); compare without it."""
    return " ".join(text.replace(",", " , ").split())


def _caption_tokens(caption: str) -> list[str]:
    """The words and commas of a caption, i.e. the tokens it should encode to."""
    return caption.replace(",", " , ").split()


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return build_clip_tokenizer(WORDS, model_max_length=MAX_LEN)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory) -> str:
    return str(save_clip_tokenizer(WORDS, tmp_path_factory.mktemp("tok") / "tokenizer"))


def test_special_tokens_follow_sd15(tokenizer):
    assert isinstance(tokenizer, CLIPTokenizer)
    assert tokenizer.bos_token == "<|startoftext|>"
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.model_max_length == MAX_LEN
    # Same layout as OpenAI's vocab: 512 byte tokens, the merges, then the two specials last.
    vocab = tokenizer.get_vocab()
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert tokenizer.bos_token_id == len(vocab) - 2 and tokenizer.eos_token_id == len(vocab) - 1


def test_every_word_is_one_token(tokenizer):
    for word in WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word


def test_captions_encode_one_token_per_word_and_round_trip(tokenizer):
    captions = all_captions()
    enc = tokenizer(captions, padding="max_length", max_length=MAX_LEN)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    vocab = tokenizer.get_vocab()
    for caption, ids, mask in zip(captions, enc["input_ids"], enc["attention_mask"]):
        expected = [bos] + [vocab[t + "</w>"] for t in _caption_tokens(caption)] + [eos]
        assert len(ids) == MAX_LEN
        assert ids[: len(expected)] == expected, caption
        # Padding is <|endoftext|>, masked out.
        assert ids[len(expected) :] == [tokenizer.pad_token_id] * (MAX_LEN - len(expected))
        assert mask == [1] * len(expected) + [0] * (MAX_LEN - len(expected))
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert _normalise(decoded) == _normalise(caption)


def test_longest_caption_fits(tokenizer):
    longest = max(len(tokenizer(c)["input_ids"]) for c in all_captions())
    assert longest <= MAX_LEN


@pytest.mark.parametrize("text", ["zebra", "café"])
def test_unknown_words_fall_back_to_bytes(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    # Byte fallback, not <unk> (which is <|endoftext|>).
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_overlapping_words_stay_single_tokens():
    # Merges for one word can fire inside another ("r e" from "red" inside "green"), and repeated
    # letters make BPE pair up the wrong neighbours; every word must still end up as one token.
    words = ["red", "green", "greener", "re", "aa", "aaaaa", "abab", "bab", "Blue"]
    tok = build_clip_tokenizer(words)
    for word in words:
        assert tok.tokenize(word) == [word.lower() + "</w>"]


def test_words_clip_would_split_are_rejected():
    for bad in ["don't", "a b", "x1", ""]:
        with pytest.raises(ValueError):
            build_clip_tokenizer([bad])


def test_build_is_deterministic(tmp_path):
    a = save_clip_tokenizer(WORDS, tmp_path / "a")
    # Input order and duplicates must not matter.
    b = save_clip_tokenizer(list(reversed(WORDS)) + WORDS[:3], tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    merges = (a / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    # "red" is built left to right, and every merge's result is a vocab entry.
    vocab = json.loads((a / "vocab.json").read_text(encoding="utf-8"))
    assert merges.index("r e") < merges.index("re d</w>")
    assert all("".join(m.split(" ")) in vocab for m in merges[1:])


def test_reload_offline_matches_in_memory(tokenizer, saved_dir, tmp_path):
    # A folder with only the classic vocab/merges pair must load to the same tokenizer too.
    classic = tmp_path / "classic"
    classic.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(saved_dir, name), classic / name)
    texts = all_captions() + ["zebra", "a café, zebra"]
    # A fresh interpreter, so HF_HUB_OFFLINE is honoured from import time as in real use. It loads
    # CLIPTokenizer only: AutoTokenizer drags in torch, too slow here (it is checked in-process).
    script = textwrap.dedent(
        """
        import json, sys
        from transformers import CLIPTokenizer
        full, classic = sys.argv[1], sys.argv[2]
        texts = json.load(sys.stdin)
        toks = [
            CLIPTokenizer.from_pretrained(full),
            CLIPTokenizer.from_pretrained(classic, model_max_length=16),
        ]
        print(json.dumps({
            "classes": [type(t).__name__ for t in toks],
            "max_len": [t.model_max_length for t in toks],
            "ids": [t(texts, padding="max_length", truncation=True)["input_ids"] for t in toks],
        }))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    out = subprocess.run(
        [sys.executable, "-c", script, saved_dir, str(classic)],
        input=json.dumps(texts), env=env, capture_output=True, text=True, encoding="utf-8",
        check=True, timeout=60,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["classes"] == ["CLIPTokenizer"] * 2
    assert got["max_len"] == [MAX_LEN] * 2
    expected = tokenizer(texts, padding="max_length", truncation=True)["input_ids"]
    for ids in got["ids"]:
        assert ids == expected


def test_auto_tokenizer_loads_saved_folder(tokenizer, saved_dir):
    # What diffusers' loaders and user code reach through the Auto API.
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(saved_dir, local_files_only=True)
    assert isinstance(auto, CLIPTokenizer)
    texts = all_captions()[:50] + ["zebra"]
    expected = tokenizer(texts, padding="max_length")["input_ids"]
    assert auto(texts, padding="max_length")["input_ids"] == expected
