"""What a generation benchmark run compares and on which prompts: the variants of ours, the
peers, prompt lengths and settings (`GenerationBenchConfig`), and the prompts themselves (the
same token ids for every engine).

Test: .venv/bin/pytest tests/benchmarks/test_gguf_peers.py
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUITE = "generation"
OURS = "ours"
LLAMA_CPP = "llama.cpp"  # GGUF peers are named "llama.cpp <TYPE>"
TRANSFORMERS = "transformers-fp32"
GGUF_TYPES = ("Q4_0", "Q4_K_M", "Q8_0", "Q4_1", "F16")
PEERS = tuple(f"{LLAMA_CPP} {t}" for t in GGUF_TYPES) + (TRANSFORMERS,)
# Peers timed by default: every quantization (F16 only scores the reference perplexity).
DEFAULT_PEERS = tuple(f"{LLAMA_CPP} {t}" for t in GGUF_TYPES if t != "F16")

DEFAULT_PROMPT_TOKENS = (100, 800, 1600)
DEFAULT_NEW_TOKENS = 128
QUESTION = "Which seal does pump P-101 use, and what torque do the gland nuts need?"

# Used when examples/plant is not there: any technical prose works, speed does not depend on it.
FALLBACK_TEXT = (
    "Centrifugal pump P-101 moves cooling water from the basin to the condenser. Before any work, "
    "isolate the motor at the local switch, lock and tag it, close suction valve V-11 and discharge "
    "valve V-12, and drain the casing through the low-point drain. The mechanical seal is a single "
    "cartridge seal with silicon carbide faces; replace it as a unit. Torque the gland nuts evenly "
    "in a cross pattern to 24 N m. After reassembly, vent the casing, open the suction valve fully, "
    "start the pump against a closed discharge valve, then open the discharge valve slowly while "
    "watching the discharge pressure, which must settle between 4.2 and 5.1 bar. Record vibration "
    "at the drive-end bearing; above 4.5 mm/s RMS, stop the pump and check the alignment. "
)


@dataclass(frozen=True)
class Variant:
    """One onnxruntime-genai model folder to measure, with optional runtime settings.

    served=True runs it through GenaiGenerator (the service's code; `tuning` may then hold
    GenaiGenerator keyword arguments such as prefill_chunk); False drives onnxruntime-genai
    directly on token ids (GenaiTuning fields in `tuning`), as the export studies did."""

    name: str
    model_dir: Path
    tuning: dict = field(default_factory=dict)
    served: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"variant name must be a non-empty word, got {self.name!r}")


@dataclass(frozen=True)
class GenerationBenchConfig:
    variants: tuple[Variant, ...]
    hf_dir: Path | None = None  # transformers peer; also the source of the chat template
    ggufs: dict = field(default_factory=dict)  # peer name ("llama.cpp Q4_0") -> GGUF path
    threads: int = 2
    prompt_tokens: tuple[int, ...] = DEFAULT_PROMPT_TOKENS
    new_tokens: int = DEFAULT_NEW_TOKENS
    warmups: int = 1
    repeats: int = 5
    peers: tuple[str, ...] = DEFAULT_PEERS
    plant_dir: Path | None = None
    worker_timeout_s: float = 600.0
    # Before each run, wait up to this long for other processes to leave the CPU mostly idle
    # (their share below quiet_share); a shared box is never fully quiet, so it is bounded.
    quiet_wait_s: float = 3.0
    quiet_share: float = 0.25
    # Also measure a follow-up request that shares the system prompt and passage header with
    # the previous one, each engine reusing that prefix's KV cache (the ~800-token size).
    prefix_reuse: bool = True
    # Wall-time bound of the timed runs (None: none). Each prompt size and the follow-up phase
    # get an equal share; once a share is spent, that phase stops after the round in progress
    # (at least one measured round always runs). On a contended box llama.cpp can slow down
    # ~50x, and the suite must still end; the records say how many repetitions ran.
    budget_s: float | None = None
    # False: every engine's threads sleep between operators instead of spinning (ours:
    # allow_spinning=False; llama.cpp: OMP_WAIT_POLICY=PASSIVE). Spinning is each engine's
    # default and the fastest on a quiet box, but when other jobs hold the cores a spinning
    # thread waits for a descheduled peer: llama.cpp then runs ~20x slower (800-token prompt:
    # TTFT ~200 s spinning, 9 s passive, load ~13 on 2 cores), so a contended run uses False.
    spinning: bool = True

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants must name at least one model folder of ours")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or set(names) & set(PEERS):
            raise ValueError(f"variant names must be unique and not a peer's name, got {names}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not self.prompt_tokens or min(self.prompt_tokens) < 16:
            raise ValueError(f"prompt_tokens must be sizes >= 16, got {self.prompt_tokens}")
        if self.new_tokens < 2:
            raise ValueError(
                f"new_tokens must be >= 2 (decode speed needs two tokens), got {self.new_tokens}"
            )
        if self.warmups < 0:
            raise ValueError(f"warmups must be >= 0, got {self.warmups}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        unknown = set(self.peers) - set(PEERS)
        if unknown:
            raise ValueError(f"peers must be among {PEERS}, got {sorted(unknown)}")
        bad = set(self.ggufs) - set(PEERS)
        if bad:
            raise ValueError(f"GGUF peer names must be among {PEERS}, got {sorted(bad)}")


# --- prompts: the same token ids for every engine ---


def _source_text(plant_dir: Path | None) -> str:
    if plant_dir is not None:
        docs = sorted((Path(plant_dir) / "docs").glob("*.md"))
        if docs:
            return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in docs)
    return FALLBACK_TEXT * 40


def build_prompts(
    model_dir: Path, sizes: Sequence[int], plant_dir: Path | None = None, offset_words: int = 0
) -> dict[int, list[int]]:
    """Chat prompts of at most (and about) `sizes` tokens each, as token ids of the model's own
    tokenizer: the grounded RAG format (system prompt, passages, question) where it fits, plain
    chat for sizes below it. The passage text is cut to fit; `offset_words` starts it further
    into the documents (another request with the same system prompt and passage header)."""
    return {
        size: ids
        for size, (_, ids) in build_prompt_texts(model_dir, sizes, plant_dir, offset_words).items()
    }


def build_prompt_texts(
    model_dir: Path, sizes: Sequence[int], plant_dir: Path | None = None, offset_words: int = 0
) -> dict[int, tuple[str, list[int]]]:
    """As `build_prompts`, with each prompt's text (what the service hands its generator)."""
    from tokenizers import Tokenizer

    from appliance.generation.genai import compile_chat_template, load_chat_template
    from appliance.prompting import PromptPassage, build_messages

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    template_text, special = load_chat_template(Path(model_dir))
    template = compile_chat_template(template_text) if template_text else None
    words = _source_text(plant_dir).split()
    words = words[offset_words % max(len(words), 1) :] + words[: offset_words % max(len(words), 1)]

    while len(words) < 2 * max(sizes):  # long prompts: the documents again
        words = words + words

    def render(messages: list[dict]) -> tuple[str, list[int]]:
        if template is not None:
            text = template.render(messages=messages, add_generation_prompt=True, **special)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return text, tokenizer.encode(text, add_special_tokens=False).ids

    def grounded(n_words: int) -> tuple[str, list[int]]:
        passages = [PromptPassage(text=" ".join(words[:n_words]), title="Plant documents")]
        return render(build_messages(QUESTION, passages))

    def plain(n_words: int) -> tuple[str, list[int]]:  # no retrieval: context pasted in
        question = f"{QUESTION}\n\n{' '.join(words[:n_words])}".strip()
        return render(build_messages(question, None))

    prompts: dict[int, tuple[str, list[int]]] = {}
    for size in sizes:
        # The grounded format needs room for at least a few passage words; below that, plain chat.
        make = grounded if len(grounded(8)[1]) <= size else plain
        if len(make(0)[1]) > size:
            raise ValueError(
                f"a prompt of {size} tokens is too small for a chat prompt "
                f"({len(make(0)[1])} tokens with no context)"
            )
        lo, hi = 0, min(len(words), size)  # a word is at least one token
        while lo < hi:  # the most words that keep the prompt within `size` tokens
            mid = (lo + hi + 1) // 2
            if len(make(mid)[1]) <= size:
                lo = mid
            else:
                hi = mid - 1
        prompts[size] = make(lo)
    return prompts
