"""The on-disk cache of greedy completions (memr1.llm.completion_cache): reused across objects, never for
sampled decoding, keyed on everything a completion depends on, and robust to a torn last line."""

from __future__ import annotations

import json

import pytest

from memr1.errors import ConfigError
from memr1.llm.completion_cache import CompletionCache, prompt_key
from memr1.llm.generate import GREEDY, Sampling, ScriptedGenerator


class Counting(ScriptedGenerator):
    """Completes with the prompt reversed and numbered by call, and records the prompts it is sent."""

    def __init__(self, name: str = "scripted"):
        self.sent: list[str] = []
        super().__init__(lambda m: f"{m[-1]['content'][::-1]} #{len(self.sent)}", name)

    def generate(self, prompts, sampling=GREEDY):
        self.sent += [p[-1]["content"] for p in prompts]
        return super().generate(prompts, sampling)


def msgs(*texts: str):
    return [[{"role": "user", "content": t}] for t in texts]


def test_a_prompt_completed_once_is_read_back_in_later_calls_and_by_a_new_cache(tmp_path):
    path = tmp_path / "c.jsonl"
    inner = Counting()
    cache = CompletionCache(inner, path)
    first = cache.generate(msgs("a", "b", "a"))  # "a" twice in one batch: completed once
    assert inner.sent == ["a", "b"] and first[0] == first[2]
    again = cache.generate(msgs("b", "c", "a"))
    assert inner.sent == ["a", "b", "c"] and again[0] == first[1] and again[2] == first[0]
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)

    fresh_inner = Counting()
    reopened = CompletionCache(fresh_inner, path)
    assert reopened.generate(msgs("c", "a", "b")) == [again[1], first[0], first[1]]  # text, counts, latency
    assert fresh_inner.sent == [] and reopened.hits == 3
    assert (reopened.name, reopened.backend, reopened.count_tokens("x y")) == ("scripted", "scripted", 2)


def test_sampled_decoding_always_reaches_the_model(tmp_path):
    inner = Counting()
    cache = CompletionCache(inner, tmp_path / "c.jsonl")
    hot = Sampling(temperature=1.0, seed=0)
    cache.generate(msgs("a"), hot)
    cache.generate(msgs("a"), hot)
    assert inner.sent == ["a", "a"] and len(cache) == 0 and not (tmp_path / "c.jsonl").exists()


def test_the_key_covers_model_backend_caps_and_messages_but_not_the_seed():
    a, b = Counting("m1"), Counting("m2")
    m = msgs("x")[0]
    base = prompt_key(a, m, Sampling(max_new_tokens=8))
    assert prompt_key(a, m, Sampling(max_new_tokens=8, seed=3)) == base
    others = [
        prompt_key(b, m, Sampling(max_new_tokens=8)),
        prompt_key(a, m, Sampling(max_new_tokens=9)),
        prompt_key(a, m, Sampling(max_new_tokens=8, stop=("\n",))),
        prompt_key(a, [{"role": "system", "content": "x"}], Sampling(max_new_tokens=8)),
        prompt_key(a, msgs("y")[0], Sampling(max_new_tokens=8)),
    ]
    assert len({base, *others}) == 6


def test_another_model_name_does_not_read_the_first_models_completions(tmp_path):
    path = tmp_path / "c.jsonl"
    CompletionCache(Counting("m1"), path).generate(msgs("a"))
    other = Counting("m2")
    CompletionCache(other, path).generate(msgs("a"))
    assert other.sent == ["a"]


def test_a_torn_last_line_is_counted_skipped_and_closed_before_the_next_append(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    CompletionCache(Counting(), path).generate(msgs("a", "b"))
    whole = path.read_text()
    path.write_text(whole[: len(whole) - 20])  # a crash mid-append: "b"'s line lost its end
    inner = Counting()
    cache = CompletionCache(inner, path)
    assert cache.unreadable == 1 and "not a stored completion" in caplog.text
    cache.generate(msgs("a", "b", "c"))
    assert inner.sent == ["b", "c"]
    again = CompletionCache(Counting(), path)
    assert again.unreadable == 1 and len(again) == 3  # the new lines did not join the torn one
    assert all(json.loads(line)["key"] for line in path.read_text().splitlines()[-2:])


def test_a_wrong_completion_count_and_a_nested_cache_are_config_errors(tmp_path):
    class Short(ScriptedGenerator):
        def generate(self, prompts, sampling=GREEDY):
            return super().generate(prompts[:-1], sampling)

    with pytest.raises(ConfigError, match="2 completions for 3 prompts"):
        CompletionCache(Short(lambda m: "x"), tmp_path / "c.jsonl").generate(msgs("a", "b", "c"))
    with pytest.raises(ConfigError, match="not another CompletionCache"):
        CompletionCache(CompletionCache(Counting(), tmp_path / "d.jsonl"), tmp_path / "e.jsonl")
