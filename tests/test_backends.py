"""memr1.llm.backends: the tiny model through TransformersGenerator, and OpenAIGenerator against a
real chat-completions HTTP server on 127.0.0.1 (no mocks of either). The Unsloth path needs CUDA
and is only checked for refusing to run without it."""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

import pytest
from chat_server import Request, completion, error, serve

from memr1.errors import ConfigError
from memr1.llm import (
    BackendError,
    Generation,
    Generator,
    OpenAIGenerator,
    Sampling,
    ScriptedGenerator,
    TransformersGenerator,
    UnslothGenerator,
    load_policy,
    make_generator,
)

SECRET = "sk-test-SECRET-do-not-leak-5678"


def chat(*contents: str) -> list[dict[str, str]]:
    """A conversation: an optional system message, then the user message (the last content)."""
    roles = ["system"] * (len(contents) - 1) + ["user"]
    return [{"role": r, "content": c} for r, c in zip(roles, contents)]


PROMPTS = [
    chat("Hi"),
    chat("You remember everything the user tells you.", "What did Caroline say on 8 May 2023?"),
    chat("Where is the cafe?"),
    chat("I ran a 5k charity race on Sunday and finished in 27 minutes. Did you?"),
    chat("Tell me about the cats."),
    chat("You answer in six words at most.", "When did Jon open the dance studio?"),
]


# ----------------------------------------------------------------------------- local models


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny")


@pytest.fixture(scope="module")
def sharp():
    """The tiny model with its layer weights scaled up ×8.

    The plain tiny model (random weights, tied embeddings) greedily repeats the prompt's last token,
    "\\n", for every prompt, so a batch-vs-alone comparison on it could not fail. Scaled up, its
    layers make the output depend on the whole context: different prompts give different texts.
    """
    import torch

    policy = load_policy("tiny")
    with torch.no_grad():
        for name, weight in policy.model.named_parameters():
            if ".layers." in name and "norm" not in name and weight.dim() == 2:
                weight.mul_(8)
    return policy


def template_ids(policy, messages) -> list[int]:
    enc = policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def test_greedy_returns_one_generation_per_prompt_with_token_counts(tiny) -> None:
    gen = TransformersGenerator(tiny, batch_size=4)
    assert isinstance(gen, Generator) and (gen.name, gen.backend) == ("tiny", "transformers")
    out = gen.generate(PROMPTS, Sampling(max_new_tokens=6))
    assert len(out) == len(PROMPTS) and all(isinstance(g, Generation) for g in out)
    for prompt, g in zip(PROMPTS, out):
        assert g.prompt_tokens == len(template_ids(tiny, prompt))  # pad tokens are not counted
        assert 1 <= g.completion_tokens <= 6 and isinstance(g.text, str) and g.latency_s > 0
    assert gen.generate([], Sampling(max_new_tokens=6)) == []


def test_greedy_is_the_same_alone_and_inside_a_padded_batch(sharp) -> None:
    sampling = Sampling(max_new_tokens=12)
    lengths = {len(template_ids(sharp, p)) for p in PROMPTS}
    assert len(lengths) > 2  # rows really get different amounts of left padding
    batched = TransformersGenerator(sharp, batch_size=4).generate(PROMPTS, sampling)  # batches of 4 + 2
    alone = [TransformersGenerator(sharp).generate([p], sampling)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [(g.prompt_tokens, g.completion_tokens) for g in batched] == [
        (g.prompt_tokens, g.completion_tokens) for g in alone
    ]
    assert len({g.text for g in alone}) == len(PROMPTS)  # the texts depend on the prompt
    again = TransformersGenerator(sharp, batch_size=3).generate(PROMPTS[::-1], sampling)[::-1]
    assert [g.text for g in again] == [g.text for g in alone]


def test_sampling_repeats_with_a_seed_and_changes_with_another(sharp) -> None:
    gen = TransformersGenerator(sharp, batch_size=4)
    first = gen.generate(PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=7))
    second = gen.generate(PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=7))
    other = gen.generate(PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=8))
    greedy = gen.generate(PROMPTS, Sampling(max_new_tokens=8))
    assert [g.text for g in first] == [g.text for g in second]
    assert [g.text for g in first] != [g.text for g in other]
    assert [g.text for g in first] != [g.text for g in greedy]


def test_identical_prompts_in_one_sampled_batch_get_different_samples(sharp) -> None:
    out = TransformersGenerator(sharp).generate([PROMPTS[0]] * 4, Sampling(max_new_tokens=8, temperature=1.0, seed=0))
    assert len({g.text for g in out}) > 1  # one RNG stream for the batch, not one seed per row


def test_finish_reason_length_when_max_new_tokens_is_hit(tiny) -> None:
    out = TransformersGenerator(tiny).generate(PROMPTS[:2], Sampling(max_new_tokens=1))
    assert [(g.completion_tokens, g.finish_reason) for g in out] == [(1, "length")] * 2


def test_stop_strings_end_generation_at_the_string(sharp) -> None:
    import re

    gen = TransformersGenerator(sharp)
    (free,) = gen.generate(PROMPTS[:1], Sampling(max_new_tokens=24))
    assert free.finish_reason == "length"
    stop = re.findall(r" ([a-z]{4,})", free.text)[0]  # a word the greedy text reaches after a few tokens
    (cut,) = gen.generate(PROMPTS[:1], Sampling(max_new_tokens=24, stop=(stop,)))
    assert cut.finish_reason == "stop" and stop in cut.text and cut.text in free.text
    assert cut.completion_tokens < free.completion_tokens  # nothing generated past the string
    assert len(cut.text) - (cut.text.index(stop) + len(stop)) < 8  # at most the rest of its last token
    with pytest.raises(ConfigError, match="stop"):
        Sampling(stop="</query>")  # type: ignore[arg-type]


def test_eos_stops_generation_is_counted_and_not_shown() -> None:
    import torch

    policy = load_policy("tiny")
    tok, model = policy.tokenizer, policy.model
    newline = tok.convert_tokens_to_ids(tok.tokenize("\n"))[0]
    # Tied embeddings: the untrained model echoes the prompt's last token ("\n"); an eos embedding
    # twice as long in the same direction outscores it, so this model stops at once.
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[tok.eos_token_id] = 2 * emb[newline]
    out = TransformersGenerator(policy).generate(PROMPTS[:3], Sampling(max_new_tokens=5))
    assert [(g.text, g.completion_tokens, g.finish_reason) for g in out] == [("", 1, "stop")] * 3


def test_generate_uses_eval_mode_and_restores_training_mode(tiny) -> None:
    seen: list[bool] = []
    handle = tiny.model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    tiny.model.train()
    try:
        TransformersGenerator(tiny).generate(PROMPTS[:1], Sampling(max_new_tokens=2))
    finally:
        handle.remove()
        training = tiny.model.training
        tiny.model.eval()
    assert seen and not any(seen) and training


def test_a_bare_conversation_is_refused(tiny) -> None:
    with pytest.raises(ConfigError, match=r"wrap a single conversation as \[messages\]"):
        TransformersGenerator(tiny).generate(PROMPTS[0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        TransformersGenerator(tiny, batch_size=0)


def test_unsloth_generator_refuses_without_cuda(tiny) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU refusal; the CUDA path is not tested here")
    with pytest.raises(ConfigError, match="TransformersGenerator") as err:
        UnslothGenerator(tiny)
    assert "backend='transformers'" in str(err.value) and "CUDA" in str(err.value)


def test_make_generator_local_backends(tiny) -> None:
    gen = make_generator("tiny", "transformers", batch_size=2)
    assert isinstance(gen, TransformersGenerator) and (gen.name, gen.batch_size) == ("tiny", 2)
    assert len(gen.generate(PROMPTS[:3], Sampling(max_new_tokens=2))) == 3
    import torch

    if not torch.cuda.is_available():
        assert type(make_generator("tiny")) is TransformersGenerator  # auto → transformers on CPU
        with pytest.raises(ConfigError, match="backend='transformers'"):
            make_generator("tiny", "unsloth")


def test_make_generator_errors() -> None:
    with pytest.raises(ConfigError, match="auto, transformers, unsloth, openai"):
        make_generator("tiny", "vllm")
    with pytest.raises(ConfigError, match="base_url"):
        make_generator("qwen2.5:7b", "openai")
    with pytest.raises(ConfigError, match="http://"):
        make_generator("qwen2.5:7b", "openai", base_url="127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match="adapter_config.json"):
        make_generator("tiny", "transformers", lora_path="/nonexistent/adapter")
    gen = make_generator("qwen2.5:7b", "openai", base_url="http://127.0.0.1:9/v1")  # no request made
    assert isinstance(gen, OpenAIGenerator) and (gen.name, gen.backend) == ("qwen2.5:7b", "openai")
    assert isinstance(ScriptedGenerator(str), Generator)


def test_local_generator_counts_with_the_model_tokenizer_and_knows_its_window(tiny) -> None:
    gen = TransformersGenerator(tiny)
    texts = [c["content"] for p in PROMPTS for c in p]
    counts = [gen.count_tokens(t) for t in texts]
    assert counts == [len(tiny.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    assert counts != [len(t.split()) for t in texts]  # really the tokenizer, not whitespace words
    assert gen.tokenizer_name == "tiny tokenizer"
    assert gen.context_window == tiny.model.config.max_position_embeddings > 0


def test_from_model_wraps_a_model_in_memory(tiny) -> None:
    gen = TransformersGenerator.from_model(tiny.model, tiny.tokenizer, name="in-training", batch_size=2)
    assert (gen.name, gen.backend, gen.batch_size, gen.note) == ("in-training", "transformers", 2, "")
    assert gen.tokenizer_name == "in-training tokenizer" and isinstance(gen, Generator)
    sampling = Sampling(max_new_tokens=5)
    assert [g.text for g in gen.generate(PROMPTS[:3], sampling)] == [
        g.text for g in TransformersGenerator(tiny).generate(PROMPTS[:3], sampling)
    ]


def test_generators_without_a_tokenizer_count_whitespace_words() -> None:
    remote = OpenAIGenerator("http://127.0.0.1:9/v1", "qwen2.5:7b")  # no request made
    for gen in (ScriptedGenerator(str), remote):
        assert isinstance(gen, Generator)
        assert (gen.count_tokens("  two\twords \n"), gen.tokenizer_name, gen.context_window) == (2, "whitespace", None)

    class GenerateOnly:  # the protocol needs count_tokens, tokenizer_name and context_window too
        name, backend = "x", "scripted"

        def generate(self, prompts, sampling=Sampling()):
            return []

    assert not isinstance(GenerateOnly(), Generator)


def test_make_generator_attaches_a_lora_adapter(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    policy = load_policy("tiny")
    lora = get_peft_model(
        policy.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )  # non-zero: changes outputs
    lora.save_pretrained(tmp_path)
    sampling = Sampling(max_new_tokens=6)
    base = make_generator("tiny", "transformers").generate(PROMPTS[:2], sampling)
    tuned = make_generator("tiny", "transformers", lora_path=str(tmp_path)).generate(PROMPTS[:2], sampling)
    assert [g.text for g in tuned] != [g.text for g in base]


# ----------------------------------------------------------------------------- OpenAI over HTTP


class ChatServer:
    """An OpenAI-compatible server that echoes the last user message.

    ``statuses`` are answered to the first requests in turn (then 200); an error body echoes the
    Authorization header back, as some servers do. The first ``meet`` requests wait for each other
    at a barrier before answering, which only concurrent clients get past.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.usage = True
        self.html = False
        self.in_flight = self.peak = 0
        self.barrier: threading.Barrier | None = None
        self.lock = threading.Lock()
        self.rng = random.Random(0)
        self.base_url = ""

    def handle(self, req: Request) -> tuple[int, bytes, str]:
        with self.lock:
            self.requests.append({"path": req.path, "headers": req.headers, "body": req.body})
            n = len(self.requests)
            status = self.statuses[n - 1] if n <= len(self.statuses) else 200
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            delay = self.rng.uniform(0, 0.03)
        try:
            if self.barrier is not None and n <= self.barrier.parties:
                self.barrier.wait(timeout=5)
            threading.Event().wait(delay)
        finally:
            with self.lock:
                self.in_flight -= 1
        if self.html:
            return status, b"<html>Welcome</html>", "text/html"
        if status != 200:
            return status, error(req, status, "bad request"), "application/json"
        usage = {"prompt_tokens": 11 + n, "completion_tokens": 3, "total_tokens": 14 + n} if self.usage else None
        finish = "length" if req.body["max_tokens"] < 3 else "stop"
        text = "echo: " + req.body["messages"][-1]["content"]
        return 200, completion(text, req.body["model"], n, usage, finish), "application/json"


@pytest.fixture
def server():
    srv = ChatServer()
    with serve(srv.handle) as srv.base_url:
        yield srv


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MEMR1_LLM_API_KEY",
        "OPENAI_API_KEY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


def client(base_url: str, **kw: Any) -> OpenAIGenerator:
    return OpenAIGenerator(base_url, "served-model", **{"timeout_s": 10, "backoff_s": 0.001, **kw})


def test_openai_results_keep_prompt_order_under_concurrency(server: ChatServer) -> None:
    server.barrier = threading.Barrier(2)  # the first two requests must be in flight together
    prompts = [chat(f"question {i}") for i in range(10)]
    out = client(server.base_url, max_concurrency=3).generate(prompts)
    assert [g.text for g in out] == [f"echo: question {i}" for i in range(10)]
    assert len(server.requests) == 10 and 2 <= server.peak <= 3
    assert all(g.completion_tokens == 3 and g.finish_reason == "stop" and g.latency_s > 0 for g in out)
    assert sorted(g.prompt_tokens for g in out) == list(range(12, 22))  # each row its own usage


def test_openai_request_body_and_path(server: ChatServer) -> None:
    prompts = [chat("Be brief.", "a"), chat("b")]
    out = client(server.base_url).generate(prompts, Sampling(max_new_tokens=2, temperature=0.7, top_p=0.9, seed=41))
    assert [g.finish_reason for g in out] == ["length", "length"]
    bodies = sorted((r["body"] for r in server.requests), key=lambda b: b["seed"])
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2
    for i, body in enumerate(bodies):
        assert body["messages"] == prompts[i]
        assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (
            "served-model",
            2,
            0.7,
            0.9,
            41 + i,
        )
    client(server.base_url).generate(prompts[:1])  # greedy, no seed: none is sent
    assert server.requests[-1]["body"]["temperature"] == 0 and "seed" not in server.requests[-1]["body"]
    client(server.base_url).generate(prompts[:1], Sampling(stop=("</query>", "</answer>")))
    assert server.requests[-1]["body"]["stop"] == ["</query>", "</answer>"]
    assert "stop" not in bodies[0]  # sent only when asked for


def test_openai_missing_usage_falls_back_to_word_counts(server: ChatServer) -> None:
    server.usage = False
    (g,) = client(server.base_url).generate([chat("You are terse.", "one two three")])
    assert (g.text, g.prompt_tokens, g.completion_tokens) == ("echo: one two three", 6, 4)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_openai_retries_transient_errors(server: ChatServer, status: int) -> None:
    server.statuses = [status, status]
    (g,) = client(server.base_url, max_retries=2).generate([chat("hello")])
    assert g.text == "echo: hello" and len(server.requests) == 3


def test_openai_gives_up_after_retries(server: ChatServer) -> None:
    server.statuses = [502] * 10
    with pytest.raises(BackendError, match="502") as err:
        client(server.base_url, max_retries=2).generate([chat("hello")])
    assert len(server.requests) == 3 and f"{server.base_url}/chat/completions" in str(err.value)


def test_openai_client_error_fails_at_once_without_leaking_the_key(server: ChatServer, monkeypatch) -> None:
    monkeypatch.setenv("MEMR1_LLM_API_KEY", SECRET)
    server.statuses = [400]
    gen = client(server.base_url, max_retries=3)
    with pytest.raises(BackendError) as err:
        gen.generate([chat("hello")])
    assert len(server.requests) == 1
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # really sent
    msg = str(err.value)
    assert "400" in msg and server.base_url in msg and "served-model" in msg
    assert SECRET not in msg and SECRET not in repr(err.value) and SECRET not in repr(gen)


def test_openai_unauthorized_names_the_key_variable(server: ChatServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the fallback variable
    server.statuses = [401]
    with pytest.raises(BackendError, match="MEMR1_LLM_API_KEY") as err:
        client(server.base_url).generate([chat("hello")])
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(err.value) and "401" in str(err.value)


def test_openai_sends_no_key_when_none_is_set(server: ChatServer) -> None:
    client(server.base_url).generate([chat("hello")])
    assert "Authorization" not in server.requests[0]["headers"]


def test_openai_connection_refused_names_the_url() -> None:
    with socket.socket() as s:  # a free port, closed again so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(BackendError) as err:
        client(url, max_retries=1).generate([chat("hello")])
    assert f"{url}/chat/completions" in str(err.value) and "unreachable" in str(err.value)


def test_openai_reply_that_is_not_a_completion(server: ChatServer) -> None:
    server.html = True  # e.g. a web UI answering because base_url lacks /v1
    with pytest.raises(BackendError, match="not with a chat completion") as err:
        client(server.base_url, max_retries=3).generate([chat("hi")])
    assert "/v1" in str(err.value) and len(server.requests) == 1
    with pytest.raises(ConfigError, match="wrap"):
        client(server.base_url).generate(chat("hi"))  # type: ignore[arg-type]
