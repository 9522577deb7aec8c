"""Reference tokenizers for the GGUF import's parity tests, independent of `tokenizers`.

- `ReferenceByteLevelBPE`: llama.cpp's byte-level BPE in plain Python: special tokens cut out
  first, then each regex of the pre-tokenizer family splits the text in turn (the regexes as
  written in llama.cpp's src/llama-vocab.cpp, run by the `regex` module), then GPT-2's byte-to-
  unicode map and rank-ordered merges (or the whole piece when the family ignores merges).
- `ReferenceSentencePiece`: the `sentencepiece` library on the model the vocabulary came from,
  applied as llama.cpp applies it: special tokens cut out first, each text fragment encoded
  with its prefix space, BOS in front when asked.

The regexes below repeat those of build/import_model.py on purpose (the `duplicates` tool pairs
the DeepSeek letter class): they are transcribed a second time from llama.cpp, partly in another
spelling (`'[sS]` where the product writes `(?i:'s`), so that a slip in the product's copy shows
as a parity failure instead of being shared by the reference. Do not import them from the product.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import regex

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK_LETTERS = (
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-"
    "\u1f7d"
    r"ᾀ-ᾴᾶ-ᾼ"
    "\u1fbe"
    r"ῂ-ῄῆ-ῌῐ-"
    "\u1fd3"
    r"ῖ-"
    "\u1fdb"
    r"ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ"
    "\u2126"
    r"ℨ"
    "\u212a"
    r"-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"  # noqa: E501, RUF001
)

# llama.cpp pre-tokenizer family -> (regexes in order, ignore_merges, NFC as the HF file does)
LLAMA_CPP_FAMILIES = {
    "gpt-2": ((_GPT2,), False, False),
    "starcoder": ((r"\p{N}", _GPT2), False, False),
    "llama3": ((_LLAMA3,), True, False),
    "qwen2": ((_QWEN2,), False, True),
    "deepseek-llm": (
        (
            "[\r\n]",
            _DEEPSEEK_LETTERS,
            r"\s?[!-/:-~！-／：-～‘-‟　-。]+",  # noqa: RUF001
            r"\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ),
        False,
        False,
    ),
    "deepseek-coder": (
        ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
        False,
        False,
    ),
}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _split_keep(pattern: regex.Pattern, text: str) -> list[str]:
    out, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append(text[pos : m.start()])
        if m.end() > m.start():
            out.append(m.group(0))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def _partition(text: str, specials: list[str]) -> list[tuple[str, bool]]:
    """The text cut into (fragment, is_special), longest special token first."""
    if not specials:
        return [(text, False)] if text else []
    pattern = regex.compile("|".join(regex.escape(s) for s in specials))
    parts, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            parts.append((text[pos : m.start()], False))
        parts.append((m.group(0), True))
        pos = m.end()
    if pos < len(text):
        parts.append((text[pos:], False))
    return parts


class ReferenceByteLevelBPE:
    def __init__(self, tokens: list[str], types: list[int], merges: list[str], family: str):
        regexes, self.ignore_merges, self.nfc = LLAMA_CPP_FAMILIES[family]
        self.patterns = [regex.compile(r) for r in regexes]
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.tokens = tokens
        self.ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
        self.specials = sorted(
            (t for t, ty in zip(tokens, types, strict=True) if ty in (3, 4)), key=len, reverse=True
        )
        self.byte_map = bytes_to_unicode()
        self.byte_unmap = {c: b for b, c in self.byte_map.items()}

    def _bpe(self, word: str) -> list[int]:
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        parts = list(word)
        while len(parts) > 1:
            ranked = [
                (self.ranks.get((a, b), 1 << 30), i)
                for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
            ]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return [self.vocab[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for frag, special in _partition(text, self.specials):
            if special:
                ids.append(self.vocab[frag])
                continue
            if self.nfc:
                frag = unicodedata.normalize("NFC", frag)
            pieces = [frag]
            for pattern in self.patterns:
                pieces = [p for piece in pieces for p in _split_keep(pattern, piece)]
            for piece in pieces:
                ids += self._bpe("".join(self.byte_map[b] for b in piece.encode("utf-8")))
        return ids

    def decode(self, ids: list[int]) -> str:
        data = bytearray()
        for i in ids:
            tok = self.tokens[i]
            if tok in self.specials:
                data += tok.encode("utf-8")
            else:
                data += bytes(self.byte_unmap[c] for c in tok)
        return data.decode("utf-8", errors="replace")


class ReferenceSentencePiece:
    def __init__(self, model_file: str, specials: list[str]):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.specials = sorted(specials, key=len, reverse=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.sp.bos_id()] if add_bos else []
        for frag, special in _partition(text, self.specials):
            ids += [self.sp.piece_to_id(frag)] if special else self.sp.encode(frag)
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)
