"""memr1.llm: the tiny test model, the policy loader and the Unsloth import guard (CPU only)."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from memr1.errors import ConfigError, ModelLoadError
from memr1.llm import build_tiny_model, load_policy, tiny, tiny_model_path, unsloth_guard
from memr1.llm.load import resolve_backend

TEXTS = [
    "Hey Mel! Good to see you! How have you been?",
    "I went to a LGBTQ support group yesterday and it was so powerful.",
    "Caroline moved from Sweden 4 years ago; she turns 30 on 2023-08-14.",
    "We meet at 1:56 pm on 8 May, 2023 -- don't be late!",
    "My kids loved the camping trip, the lake and 12 marshmallows each.",
] * 3

PROBES = [
    "Hey Caroline! 😀 I'm swamped with the kids & work. What's up with you?",
    "[1:56 pm on 8 May, 2023] Melanie: I painted a lake sunrise last year (2022).",
    "On 2023-05-08 at 10:30am we'll meet;   three spaces,\ttab and\n\nnewlines.",
    "Café naïve résumé — 日本語 — 🎉🎉 #LGBTQ $500, 98%!",
    "<|im_start|>user\nWhen did Jon open his dance studio?<|im_end|>\n",
]
HUB_ID = "memr1-test/no-such-model-anywhere"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TEXTS, seed=0)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache root for every load_policy("tiny") call, so the default model is built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env(monkeypatch, shared_cache):
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(shared_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEMR1_NO_UNSLOTH", raising=False)
    return monkeypatch


def _greedy(path, prompt="Hello Caroline, how was 8 May 2023?", n=6):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids["input_ids"].shape[1] :].tolist()


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_reloads_with_auto_classes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(tiny_dir), AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tok)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.dtype == torch.float32


def test_autotokenizer_reproduces_trained_tokenizer_ids(tiny_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    trained = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))  # exactly what was trained
    auto = AutoTokenizer.from_pretrained(tiny_dir)
    for text in PROBES:
        ids = auto(text, add_special_tokens=False)["input_ids"]
        assert ids == trained.encode(text, add_special_tokens=False).ids, text
        assert auto.decode(ids) == text
    assert auto("<|im_start|>")["input_ids"] == [auto.convert_tokens_to_ids("<|im_start|>")]


def test_chat_template_renders_chatml(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"}]
    chat = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 😀<|im_end|>\n"
    assert tok.apply_chat_template(messages, tokenize=False) == chat
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == chat + "<|im_start|>assistant\n"


def test_same_seed_same_weights_and_tokens(tiny_dir, tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_model(tmp_path / "again", TEXTS, seed=0)
    assert torch.equal(torch.rand(3), expected_next), "building must not consume the global RNG"
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    assert (again / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    first, second = _greedy(tiny_dir), _greedy(again)
    assert len(first) == 6 and first == second

    other = build_tiny_model(tmp_path / "other", TEXTS, seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_build_refuses_a_foreign_folder_and_bad_sizes(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a tiny model"):
        build_tiny_model(tmp_path, TEXTS)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="hidden_size"):
        build_tiny_model(tmp_path / "m", TEXTS, hidden_size=60)
    assert not (tmp_path / "m").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"], "no temp folder left behind"


def test_tiny_model_path_builds_once(tmp_path, monkeypatch):
    path = tiny_model_path(cache_dir=tmp_path)
    assert path.parent == tmp_path / "models" and path.name.startswith("tiny-qwen2-")
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("tiny_model_path rebuilt a cached model")

    monkeypatch.setattr(tiny, "build_tiny_model", no_rebuild)
    assert tiny_model_path(cache_dir=tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- load_policy


def test_load_policy_tiny(env, shared_cache):
    policy = load_policy("tiny")
    assert (policy.name, policy.backend, policy.fallback_used, policy.note) == ("tiny", "transformers", False, "")
    assert policy.resolved.startswith(str(shared_cache))
    tok = policy.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>"
    batch = tok(["Hi", "A much longer prompt about 8 May 2023"], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0].item() == tok.pad_token_id  # padded on the left
    out = policy.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_cpu_load_attends_with_grouped_sdpa_and_matches_sdpa(env):
    """load_policy switches a CPU model to memr1_sdpa (no key/value copy); on a left-padded batch its logits equal
    transformers' sdpa exactly, gradients to rounding, and greedy tokens are the same."""
    from memr1.llm.attention import NAME

    model, tok = (p := load_policy("tiny")).model, p.tokenizer
    assert model.config._attn_implementation == NAME
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped: sdpa would copy
    batch = tok(["Hi", "A much longer prompt about 8 May 2023 and the lake"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # padded, so stock sdpa takes its repeat_kv path

    def run(attention):
        model.set_attn_implementation(attention)
        model.zero_grad()
        logits = model(**batch).logits
        logits[:, -3:].logsumexp(-1).sum().backward()
        grad = model.model.layers[0].self_attn.k_proj.weight.grad.clone()
        with torch.no_grad():
            tokens = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        return logits.detach(), grad, tokens

    (la, ga, ta), (lb, gb, tb) = run("sdpa"), run(NAME)
    assert torch.equal(la, lb) and torch.equal(ta, tb)
    assert torch.allclose(ga, gb, atol=1e-5) and ga.abs().sum() > 0


def test_unknown_backend_is_a_config_error(env):
    with pytest.raises(ConfigError, match="auto, transformers, unsloth"):
        load_policy("tiny", backend="jax")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_unsloth_backend_refused_without_cuda(env):
    with pytest.raises(ConfigError, match="CUDA") as info:
        load_policy("tiny", backend="unsloth")
    assert "backend='transformers'" in str(info.value)


def test_offline_hub_id_without_fallback_names_the_model(env):
    with pytest.raises(ModelLoadError) as info:
        load_policy(HUB_ID, backend="transformers")
    message = str(info.value)
    assert HUB_ID in message and "huggingface-cli download" in message and "HF_HUB_OFFLINE" in message


def test_offline_hub_id_with_fallback_loads_tiny(env, caplog):
    with caplog.at_level(logging.WARNING, logger="memr1"):
        policy = load_policy(HUB_ID, backend="transformers", fallback="tiny")
    assert policy.fallback_used and policy.name == HUB_ID
    assert HUB_ID in policy.note and "'tiny'" in policy.note
    assert "tiny-qwen2-" in policy.resolved and policy.tokenizer.padding_side == "left"
    assert any(HUB_ID in r.getMessage() for r in caplog.records)


def test_local_folder_that_is_not_a_model(env, tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_policy(str(tmp_path), backend="transformers")
    assert str(tmp_path) in str(info.value) and "config.json" in str(info.value)


# --------------------------------------------------------------------------- Unsloth guard


@pytest.fixture
def fake_unsloth(tmp_path, monkeypatch):
    """Put an importable fake ``unsloth`` package on sys.path; its body is given by the test."""

    def make(body: str) -> None:
        (tmp_path / "unsloth").mkdir()
        (tmp_path / "unsloth" / "__init__.py").write_text(body)
        monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.setattr(unsloth_guard, "_failure", None)
    monkeypatch.delenv("MEMR1_NO_UNSLOTH", raising=False)
    yield make
    sys.modules.pop("unsloth", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_guard_does_not_import_unsloth_without_cuda(fake_unsloth):
    fake_unsloth("FAKE = True\n")  # importable: only the CUDA check keeps it out
    assert unsloth_guard.maybe_import_unsloth() is None
    assert "unsloth" not in sys.modules
    assert resolve_backend("auto") == "transformers"


def test_guard_respects_memr1_no_unsloth(fake_unsloth, monkeypatch):
    fake_unsloth("FAKE = True\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("MEMR1_NO_UNSLOTH", "1")
    assert unsloth_guard.maybe_import_unsloth() is None
    assert "unsloth" not in sys.modules


def test_guard_swallows_a_failing_unsloth_import(fake_unsloth, monkeypatch):
    fake_unsloth("raise NotImplementedError('Unsloth cannot find any torch accelerator')\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert unsloth_guard.maybe_import_unsloth() is None
    assert "NotImplementedError" in unsloth_guard.unsloth_unavailable_reason()
    with pytest.raises(ConfigError, match="NotImplementedError"):
        resolve_backend("unsloth")


def test_guard_imports_unsloth_when_cuda_is_there(fake_unsloth, monkeypatch):
    fake_unsloth("FAKE = True\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module = unsloth_guard.maybe_import_unsloth()
    assert module is not None and module.FAKE
    assert resolve_backend("auto") == "unsloth"
