"""The pure parts: tokenizer stand-in, text generator, SSE chunks and errors."""

from __future__ import annotations

import json

from polyserve.mockengine import textgen
from polyserve.mockengine.metrics import buckets_1_2_5
from polyserve.wire import openai as proto
from polyserve.wire import tokenizer


def test_tokenizer_rules() -> None:
    assert tokenizer.pieces("Hello, world!") == ["Hell", "o", ",", "worl", "d", "!"]
    assert tokenizer.count("Hello, world!") == 6
    assert tokenizer.count("") == 0
    assert tokenizer.completion_prompt_tokens("a b c") == 4  # BOS + 3
    msgs = [("system", "be brief"), ("user", "what is a tokenizer?")]
    assert tokenizer.chat_prompt_tokens(msgs) == len(tokenizer.chat_pieces(msgs))
    assert tokenizer.chat_prompt_tokens(msgs) == 1 + (4 + 3) + (4 + 7) + 3
    ids = tokenizer.encode(tokenizer.completion_pieces("the the"))
    assert ids[0] == tokenizer.SPECIAL_IDS[tokenizer.BOS] and ids[1] == ids[2]


def test_generated_words_are_one_token_each() -> None:
    seed = textgen.seed_of("a prompt")
    plan = textgen.plan_output(seed, 50, ignore_eos=True)
    text = textgen.full_text(seed, plan)
    assert plan == textgen.OutputPlan(50, "length")
    assert tokenizer.count(text) == 50
    assert text == textgen.full_text(textgen.seed_of("a prompt"), plan)  # deterministic


def test_eos_point_gives_stop_or_length() -> None:
    reasons = {textgen.plan_output(textgen.seed_of(f"p{i}"), 64).finish_reason for i in range(200)}
    assert reasons == {"stop", "length"}
    seed = next(s for s in range(10_000) if textgen.eos_position(s) < 64)
    plan = textgen.plan_output(seed, 64)
    assert plan.finish_reason == "stop" and plan.tokens == textgen.eos_position(seed)
    assert textgen.token_text(seed, plan.tokens - 1, plan) == ""  # EOS has no text
    # min_tokens holds EOS back; ignore_eos runs to max_tokens
    assert textgen.plan_output(seed, 64, min_tokens=63).tokens == 64
    assert textgen.plan_output(seed, 64, ignore_eos=True) == textgen.OutputPlan(64, "length")


def test_fast_content_chunk_equals_the_built_one() -> None:
    for kind in ("chat", "completion"):
        enc = proto.StreamEncoder(kind, "id-1", 'm"odel', 123, prompt_tokens=7)  # type: ignore[arg-type]
        fast = enc.token(' "wörd"', 1)
        built = proto.sse_event(enc.chunk([enc._choice(' "wörd"', None)]))
        assert fast == built
        # vLLM's exclude_unset dumps (chat_completion/serving.py:499, completion/serving.py:486)
        content = json.loads(fast[6:])
        assert "usage" not in content and content["kv_transfer_params"] is None
        final = json.loads(enc.final(" x", "length", 3)[6:])
        if kind == "chat":
            assert set(content["choices"][0]) == {
                "index", "delta", "logprobs", "finish_reason", "token_ids"
            }  # fmt: skip
            assert set(final["choices"][0]) == {
                "index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids",
                "weight_versions",
            }  # fmt: skip
            role = json.loads(enc.role()[6:])
            assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert role["prompt_token_ids"] is None and "kv_transfer_params" not in role
        else:
            assert set(content["choices"][0]) == set(final["choices"][0]) == {
                "index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids",
                "token_ids", "weight_versions",
            }  # fmt: skip
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["choices"][0]["stop_reason"] is None
        assert json.loads(enc.usage(3)[6:])["usage"] == {
            "prompt_tokens": 7,
            "total_tokens": 10,
            "completion_tokens": 3,
        }


def test_sse_decoder_handles_split_events() -> None:
    stream = proto.sse_event({"a": 1}) + proto.sse_event({"b": "x\ny"}) + proto.SSE_DONE
    dec = proto.SSEDecoder()
    payloads: list[str] = []
    for i in range(0, len(stream), 7):
        payloads += dec.feed(stream[i : i + 7])
    assert [proto.parse_sse_payload(p) for p in payloads] == [{"a": 1}, {"b": "x\ny"}, None]


def test_error_shapes_and_messages() -> None:
    assert proto.error_payload("m", 404) == {
        "error": {"message": "m", "type": "NotFoundError", "param": None, "code": 404}
    }
    assert proto.context_error(100, 50, 60) is None  # clamped, not refused
    assert proto.clamped_max_tokens(100, 50, 60) == 50
    assert proto.clamped_max_tokens(100, 50, None) == 50
    too_long = proto.context_error(100, 150, None, text_prompt=False)
    assert too_long is not None and too_long.param == "input_tokens"
    assert "contains 150 input tokens" in too_long.message
    over = proto.context_error(100, 5, 101, "max_completion_tokens")
    assert over is not None and over.param == "max_completion_tokens"
    assert over.message.startswith("max_completion_tokens=101 cannot be greater than")
    assert buckets_1_2_5(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
