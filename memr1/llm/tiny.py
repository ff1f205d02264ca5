"""A tiny random Qwen2 causal LM with a locally trained tokenizer: the ``smoke`` profile's model.

It needs no download and builds in seconds, so tests, CI and notebooks on the smoke profile can run
the real generate / GRPO code paths. Its outputs are noise; only the plumbing is meaningful.

The tokenizer is a byte-level BPE trained with the *same* normalizer and pre-tokenizer that
``transformers``' ``Qwen2Tokenizer`` rebuilds when ``AutoTokenizer`` loads a ``qwen2`` folder
(NFC, Qwen's split regex, then ByteLevel without its own regex). Training with anything else
would make ``AutoTokenizer`` give different ids from the tokenizer that was trained.

Example:
    >>> import tempfile
    >>> from memr1.llm.tiny import build_tiny_model
    >>> path = build_tiny_model(tempfile.mkdtemp(), ["Hi Caroline!", "On 8 May 2023 at 1:56 pm."])
    >>> sorted(p.name for p in path.iterdir())[:3]
    ['chat_template.jinja', 'config.json', 'generation_config.json']
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from memr1.errors import ConfigError

log = logging.getLogger("memr1")

VERSION = "1"
"""Bump when the recipe changes, so cached tiny models are rebuilt."""

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS, PAD = "<|im_end|>", "<|endoftext|>"
MAX_POSITIONS = 8192  # RoPE has no learned table: long LoCoMo prompts cost nothing here
MARKER = "memr1_tiny.json"  # written last; its presence means "a complete tiny model"
DEFAULTS = {"vocab_size": 1024, "hidden_size": 64, "num_layers": 2, "seed": 0}
"""Build settings of the cached default model (``tiny_model_path``)."""

# Copied from transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX (5.17); the parity
# test in tests/test_llm.py fails if transformers ever changes it.
QWEN_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BUILTIN_TEXTS: tuple[str, ...] = (
    "Hey Melanie! How have you been? It's been a while.",
    "I went to the LGBTQ support group yesterday and it was so powerful.",
    "On 8 May 2023 at 1:56 pm, Caroline said she wants to study counseling.",
    "My kids loved the camping trip; we roasted marshmallows by the lake.",
    "What time is the meeting? It starts at 10:30 am sharp.",
    "The train leaves platform 4 at 6:45 p.m. on Friday, 12 January 2024.",
    "I painted a sunrise last week -- the colors were orange, pink & gold.",
    "Did you finish the book? I'm only on chapter 17 of 32.",
    "Jon lost his job as a banker and opened a dance studio in March.",
    "Gina's clothing store sold 150 jackets during the winter sale!",
    "We adopted two cats, Oliver and Luna, back in 2021.",
    "Can you believe it's already December? Time flies.",
    "I ran a 5k charity race on Sunday and finished in 27 minutes.",
    "My grandmother's recipe uses 3 eggs, 2 cups of flour and 1/2 cup of sugar.",
    "Let's meet at the cafe on 5th Avenue around noon.",
    "The museum was closed on Monday (public holiday), so we went on Tuesday.",
    "I'm thinking about adopting; it would mean so much to give a child a home.",
    "Dave restored a 1967 Mustang with his brother over the summer.",
    "She scored 98% on her final exam -- the best in her class.",
    "Our flight to Tokyo was delayed by 3 hours, ugh.",
    "Thanks for listening, it really helps to talk about it.",
    "Remember the concert on 2023-07-15? The band played until midnight.",
    "I started learning the violin when I was 8 years old.",
    "The temperature dropped to -5 degrees last night; the pond froze.",
    "Evan and Sam went hiking in the Rockies for 4 days.",
    '"Never give up," my coach used to say, "even when it\'s hard."',
    "I volunteered at the animal shelter every Saturday in 2022.",
    "We celebrated my mom's 60th birthday with a surprise party.",
    "How's your new job going? Are your coworkers nice?",
    "The garden has tomatoes, basil, peppers and 12 sunflowers now.",
    "Joanna wrote a screenplay and sent it to 3 film festivals.",
    "Nate won the video game tournament and got $500 as a prize!",
    "I'll be in Paris from 3 to 10 June; any tips for good bakeries?",
    "My therapist suggested journaling each morning for ten minutes.",
    "The kids built a sandcastle at the beach; it was huge :)",
    "Audrey's dogs, Pepper and Pixie, love the new park nearby.",
    "Last Tuesday I baked banana bread and shared it with the neighbors.",
    "Is it true that you moved from Sweden 4 years ago?",
    "Tim read all seven Harry Potter books twice this year.",
    "Sounds great -- see you on Friday at 7!",
)
"""Used to train the tokenizer when the LoCoMo file cannot be found."""


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Train a tokenizer, build a random Qwen2 model and save both to ``out_dir`` atomically.

    The same ``texts`` and settings give the same files (weights are drawn from ``seed`` without
    touching the global RNG). An existing ``out_dir`` is replaced only when it is empty or an
    earlier tiny model; anything else raises, so a typo cannot wipe a folder.

    Args:
        out_dir: destination folder (parents are created).
        texts: tokenizer training corpus; default: LoCoMo turns if found, else a built-in list.
        vocab_size: BPE vocabulary cap (a small corpus may stop below it).
        hidden_size: model width; must be a multiple of 8 (4 heads with even head size).
        num_layers: number of decoder layers.
        seed: weight initialisation seed.

    Returns:
        ``out_dir`` as a Path, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Raises:
        ConfigError: bad sizes, empty texts, or ``out_dir`` holds something else.
    """
    corpus = [t for t in (_default_texts() if texts is None else texts) if t and t.strip()]
    if not corpus:
        raise ConfigError("build_tiny_model: texts is empty; pass some sentences or texts=None")
    if hidden_size <= 0 or hidden_size % 8 or num_layers <= 0 or vocab_size < 259:
        raise ConfigError(
            f"build_tiny_model: need hidden_size a positive multiple of 8, num_layers >= 1 and "
            f"vocab_size >= 259 (256 bytes + 3 specials), got {hidden_size}, {num_layers}, {vocab_size}"
        )
    out = Path(out_dir).expanduser()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MARKER).is_file())):
        raise ConfigError(f"{out} exists and is not a tiny model; pass a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, seed=seed)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tok = _train_tokenizer(corpus, vocab_size)
        model = _random_model(tok, hidden_size, num_layers, seed)
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        marker = {"version": VERSION, **settings, "num_texts": len(corpus)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful publish
    return out


def tiny_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the default tiny model's folder in the cache, building it on first use.

    The folder name carries a hash of the build settings, ``VERSION`` and the training texts, so
    a recipe change or a newly found LoCoMo file gives a fresh build instead of a stale one.

    Args:
        cache_dir: cache root; default ``memr1.paths.cache_dir()`` (``$MEMR1_CACHE_DIR``).
    """
    from memr1.paths import cache_dir as default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    texts = _default_texts()
    corpus = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    key = json.dumps({"version": VERSION, **DEFAULTS, "texts": corpus}, sort_keys=True)
    path = root / "models" / f"tiny-qwen2-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if not (path / MARKER).is_file():
        log.info("building the tiny test model in %s", path)
        build_tiny_model(path, texts, **DEFAULTS)
    return path


@functools.lru_cache(maxsize=1)
def _default_texts() -> tuple[str, ...]:
    """LoCoMo turn texts when the file is available locally, else ``BUILTIN_TEXTS``."""
    try:  # LoCoMo is optional here: any failure (missing module or file, bad file) → built-ins
        from memr1.data.locomo import load_locomo

        data = load_locomo(allow_download=False)  # building a test model never downloads
        texts = tuple(t.text for c in data.conversations for t in c.turns() if t.text)
        if texts:
            return texts
    except Exception as exc:  # noqa: BLE001
        log.debug("tiny model: LoCoMo unavailable (%s: %s); using built-in texts", type(exc).__name__, exc)
    return BUILTIN_TEXTS


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained with Qwen2Tokenizer's own pre-tokenization, wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=["<|im_start|>"],
        model_max_length=MAX_POSITIONS,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _random_model(tok, hidden_size: int, num_layers: int, seed: int):
    """A randomly initialised Qwen2ForCausalLM sized for ``tok``, weights drawn from ``seed``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos_id, pad_id = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(PAD)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seed locally; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        # ignore: transformers types `to` via @wraps(Module.to), whose signature lacks the bound self
        model = Qwen2ForCausalLM(cfg).to(torch.float32)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    return model


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``; an old ``out`` is swapped aside, then removed."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)  # atomic on one filesystem; replaces an empty folder
    except OSError:
        if (out / MARKER).is_file():  # another process finished a build meanwhile: keep it
            log.debug("another process built %s first; keeping its copy", out)
        else:
            if old is not None and not out.exists():
                os.replace(old, out)  # put the previous model back before failing
                old = None
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
