"""`baimo serve` driven by the official `openai` Python package (and raw HTTP for hostile requests), on the
tiny quantized Qwen2 fixture. Run with tools/test_server.sh.

The fixture model is random: greedy decoding repeats "\n" and never ends by itself, sampled text is byte
soup. The tests therefore compare the server with itself (streamed vs not, seeded vs seeded, alone vs
batched) and with exact token counts, not with expected prose.
"""
import json
import math
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import API_KEY, CTX, MAX_BODY, MODEL, ROOT, Server, sse_events

HELLO = [{"role": "user", "content": "Hello there"}]


def chat(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", HELLO)
    return client.chat.completions.create(**kw)


def stream_chat(client, **kw):
    """(text, chunks) of a streamed chat completion with one choice."""
    chunks = list(chat(client, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# ---------- chat ----------

def test_chat_shape(client):
    r = chat(client, max_tokens=8, temperature=0)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.system_fingerprint
    assert abs(r.created - time.time()) < 120
    (c,) = r.choices
    assert c.index == 0 and c.message.role == "assistant"
    # Greedy on the fixture repeats "\n" and never stops by itself: 8 tokens, finish `length`.
    assert c.finish_reason == "length"
    assert c.message.content == "\n" * 8
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.prompt_tokens_details.cached_tokens <= r.usage.prompt_tokens


@pytest.mark.parametrize("params", [dict(temperature=0), dict(temperature=1.0, seed=7), dict(temperature=0.8, top_p=0.9, seed=3)])
def test_stream_equals_non_stream(client, params):
    r = chat(client, max_tokens=24, **params)
    text, chunks = stream_chat(client, max_tokens=24, stream_options={"include_usage": True}, **params)
    assert text == r.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [r.choices[0].finish_reason]
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.model_dump() == r.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(server):
    c = server.conn()
    c.request("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 3, "stream": True}),
              {**server.auth(), "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    data = list(sse_events(r))
    c.close()
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in ch and len(ch["choices"]) == 1 for ch in chunks)


def test_usage_counts_real_tokens(client):
    r = chat(client, max_tokens=20, temperature=1.0, seed=11, logprobs=True)
    assert r.usage.completion_tokens == len(r.choices[0].logprobs.content)
    _, chunks = stream_chat(client, max_tokens=20, temperature=1.0, seed=11, logprobs=True,
                            stream_options={"include_usage": True})
    streamed = sum(len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs)
    assert streamed == r.usage.completion_tokens == chunks[-1].usage.completion_tokens
    # Prompt tokens: a longer conversation costs exactly the extra message's tokens more, both ways.
    a = chat(client, max_tokens=1, temperature=0).usage.prompt_tokens
    b = chat(client, max_tokens=1, temperature=0, messages=HELLO + [{"role": "assistant", "content": "Hi"},
                                                                     {"role": "user", "content": "Hello there"}]).usage.prompt_tokens
    assert b > a > 0


def test_prompt_tokens_match_completions_token_prompt(client):
    ids = [72, 101, 108, 108, 111, 44, 32, 119]
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == 3


def test_max_completion_tokens_and_length(client):
    r = chat(client, max_completion_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    # max_tokens beyond the context is fine: the answer stops at the window, finish `length`.
    r = chat(client, max_tokens=10 * CTX, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == CTX


def test_default_max_tokens_fills_context(client):
    r = chat(client, temperature=0)
    assert r.usage.total_tokens == CTX and r.choices[0].finish_reason == "length"


def test_stop_sequences(client):
    # Greedy emits "\n" forever: stop on "\n\n" ends after two tokens with nothing before the stop.
    r = chat(client, max_tokens=20, temperature=0, stop="\n\n")
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("", "stop")
    assert r.usage.completion_tokens == 2
    # Sampled text: stop on a piece of it; the answer is everything before its first occurrence.
    full = chat(client, max_tokens=40, temperature=1.0, seed=5).choices[0].message.content
    cut = next(i for i in range(3, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    stop = full[cut:cut + 2]
    expect = full[:full.find(stop)]
    for s in [stop, [stop, "never-there"], ["zzzz", "qqqq", "xxxx", stop]]:
        r = chat(client, max_tokens=40, temperature=1.0, seed=5, stop=s)
        assert r.choices[0].message.content == expect
        assert r.choices[0].finish_reason == "stop"
        text, _ = stream_chat(client, max_tokens=40, temperature=1.0, seed=5, stop=s)
        assert text == expect


def test_seed_reproducible(client):
    kw = dict(max_tokens=30, temperature=1.0, seed=1234)
    a, b = chat(client, **kw), chat(client, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    others = {chat(client, max_tokens=30, temperature=1.0, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert len(others) > 1


def test_n_choices(client):
    r = chat(client, n=3, max_tokens=12, temperature=1.0, seed=100)
    assert [c.index for c in r.choices] == [0, 1, 2]
    # Choice i draws with seed + i.
    for c in r.choices:
        single = chat(client, max_tokens=12, temperature=1.0, seed=100 + c.index).choices[0].message.content
        assert c.message.content == single
    assert r.usage.completion_tokens == sum(
        len(chat(client, max_tokens=12, temperature=1.0, seed=100 + i, logprobs=True).choices[0].logprobs.content) for i in range(3))
    chunks = list(chat(client, n=3, max_tokens=12, temperature=1.0, seed=100, stream=True))
    for c in r.choices:
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == c.index)
        assert streamed == c.message.content


def test_logprobs(client):
    r = chat(client, max_tokens=16, temperature=1.0, seed=9, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and math.isfinite(t.logprob)
        assert len(t.top_logprobs) == 5
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert sum(math.exp(x) for x in lps) <= 1.0 + 1e-4
        # The chosen token is at most as likely as the best one, and appears with the same value if listed.
        assert t.logprob <= lps[0] + 1e-6
        for a in t.top_logprobs:
            if a.token == t.token and "\ufffd" not in a.token:
                assert abs(a.logprob - t.logprob) < 1e-5
        if "\ufffd" not in t.token:
            assert bytes(t.bytes).decode() == t.token
    assert "".join(t.token for t in content if "\ufffd" not in t.token) or True
    # Greedy: the chosen token is the top alternative.
    g = chat(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3).choices[0].logprobs.content
    assert all(t.token == t.top_logprobs[0].token and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6 for t in g)
    # Streaming carries the same values.
    _, chunks = stream_chat(client, max_tokens=16, temperature=1.0, seed=9, logprobs=True, top_logprobs=5)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(streamed, content))
    # Without logprobs, none are returned.
    assert chat(client, max_tokens=2, temperature=0).choices[0].logprobs is None


def test_content_parts_and_developer_role(client):
    a = chat(client, max_tokens=6, temperature=1.0, seed=4,
             messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    b = chat(client, max_tokens=6, temperature=1.0, seed=4,
             messages=[{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                       {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}])
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


# ---------- completions and models ----------

def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    # Greedy on the fixture repeats one piece; 8 tokens, finish `length`.
    assert len(set(r.choices[0].text)) == 1 and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    r = client.completions.create(model=MODEL, prompt=["ab", "cd"], n=2, max_tokens=5, temperature=1.0, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    single = client.completions.create(model=MODEL, prompt="cd", max_tokens=5, temperature=1.0, seed=4)
    assert r.choices[3].text == single.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="cd", max_tokens=5, temperature=1.0, seed=4, stream=True) if c.choices)
    assert streamed == single.choices[0].text


def test_completions_echo_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, echo=True, logprobs=3)
    c = r.choices[0]
    assert c.text.startswith("Hello") and len(c.text) > len("Hello")
    lp = c.logprobs
    n = r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(n)]
    p = r.usage.prompt_tokens
    assert lp.token_logprobs[0] is None
    for x, top in zip(lp.token_logprobs[p:], lp.top_logprobs[p:]):
        assert x <= 0 and len(top) <= 3 and max(top.values()) >= x - 1e-6
    # The generated part equals the logprobs of the same request without echo.
    plain = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=3)
    assert plain.choices[0].logprobs.tokens == lp.tokens[p:]
    assert "Hello" + plain.choices[0].text == c.text
    assert plain.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[p:], abs=1e-5)
    # Streaming: the echo chunk first, then the same tokens.
    chunks = [ch for ch in client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0,
                                                      echo=True, logprobs=3, stream=True) if ch.choices]
    assert "".join(ch.choices[0].text for ch in chunks) == c.text
    streamed = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert streamed == lp.tokens
    # The first prompt token has no log-probability (nothing precedes it); every later one has.
    assert lp.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:p])


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    m = client.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "baimo")
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        chat(client, model="no-such-model", max_tokens=1)


def test_health_ready_metrics(server):
    assert server.request("GET", "/health", auth=False)[0] == 200
    status, _, text = server.request("GET", "/ready", auth=False)
    assert status == 200 and json.loads(text)["models"] == [MODEL]
    m = server.metrics()
    for name in ["baimo_queue_depth", "baimo_running", "baimo_kv_blocks_used", "baimo_kv_blocks_free",
                 "baimo_prefix_cache_hit_rate"]:
        assert f'{name}{{model="{MODEL}"}}' in m
    assert m[f'baimo_completion_tokens_total{{model="{MODEL}"}}'] > 0
    assert m[f'baimo_time_to_first_token_seconds_count{{model="{MODEL}"}}'] > 0
    assert m[f'baimo_inter_token_latency_seconds_count{{model="{MODEL}"}}'] > 0
    assert m['baimo_http_requests_total{route="/v1/chat/completions",status="200"}'] > 0


# ---------- hostile and malformed requests ----------

CHAT = "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


def body(**kw):
    return json.dumps({"model": MODEL, "messages": OK_MSG, "max_tokens": 2, **kw})


JSON = {"Content-Type": "application/json"}
HOSTILE = [
    # (name, method, path, body, headers, auth, status, error type)
    ("not json", "POST", CHAT, "{not json", JSON, True, 400, "invalid_request_error"),
    ("empty body", "POST", CHAT, "", JSON, True, 400, "invalid_request_error"),
    ("array body", "POST", CHAT, "[1, 2, 3]", JSON, True, 400, "invalid_request_error"),
    ("invalid utf-8", "POST", CHAT, b'{"messages": "\xff\xfe"}', JSON, True, 400, "invalid_request_error"),
    ("deep nesting", "POST", CHAT, "[" * 20000 + "]" * 20000, JSON, True, 400, "invalid_request_error"),
    ("messages not a list", "POST", CHAT, json.dumps({"model": MODEL, "messages": "hi"}), JSON, True, 400, "invalid_request_error"),
    ("missing messages", "POST", CHAT, json.dumps({"model": MODEL}), JSON, True, 400, "invalid_request_error"),
    ("empty messages", "POST", CHAT, body(messages=[]), JSON, True, 400, "invalid_request_error"),
    ("unknown role", "POST", CHAT, body(messages=[{"role": "wizard", "content": "x"}]), JSON, True, 400, "invalid_request_error"),
    ("content is a number", "POST", CHAT, body(messages=[{"role": "user", "content": 42}]), JSON, True, 400, "invalid_request_error"),
    ("image part", "POST", CHAT, body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), JSON, True, 400, "invalid_request_error"),
    ("user without content", "POST", CHAT, body(messages=[{"role": "user"}]), JSON, True, 400, "invalid_request_error"),
    ("negative max_tokens", "POST", CHAT, body(max_tokens=-1), JSON, True, 400, "invalid_request_error"),
    ("zero max_tokens", "POST", CHAT, body(max_tokens=0), JSON, True, 400, "invalid_request_error"),
    ("string max_tokens", "POST", CHAT, body(max_tokens="10"), JSON, True, 400, "invalid_request_error"),
    ("huge max_tokens", "POST", CHAT, body(max_tokens=10 ** 30), JSON, True, 400, "invalid_request_error"),
    ("temperature 5", "POST", CHAT, body(temperature=5), JSON, True, 400, "invalid_request_error"),
    ("negative temperature", "POST", CHAT, body(temperature=-1), JSON, True, 400, "invalid_request_error"),
    ("top_p 0", "POST", CHAT, body(top_p=0), JSON, True, 400, "invalid_request_error"),
    ("top_p 2", "POST", CHAT, body(top_p=2), JSON, True, 400, "invalid_request_error"),
    ("frequency_penalty 3", "POST", CHAT, body(frequency_penalty=3), JSON, True, 400, "invalid_request_error"),
    ("n 0", "POST", CHAT, body(n=0), JSON, True, 400, "invalid_request_error"),
    ("n 1000", "POST", CHAT, body(n=1000), JSON, True, 400, "invalid_request_error"),
    ("5 stop strings", "POST", CHAT, body(stop=["a", "b", "c", "d", "e"]), JSON, True, 400, "invalid_request_error"),
    ("stop is a number", "POST", CHAT, body(stop=7), JSON, True, 400, "invalid_request_error"),
    ("top_logprobs 21", "POST", CHAT, body(logprobs=True, top_logprobs=21), JSON, True, 400, "invalid_request_error"),
    ("top_logprobs without logprobs", "POST", CHAT, body(top_logprobs=2), JSON, True, 400, "invalid_request_error"),
    ("float seed", "POST", CHAT, body(seed=1.5), JSON, True, 400, "invalid_request_error"),
    ("stream_options without stream", "POST", CHAT, body(stream_options={"include_usage": True}), JSON, True, 400, "invalid_request_error"),
    ("prompt over the context", "POST", CHAT, body(messages=[{"role": "user", "content": "word " * (2 * CTX)}]), JSON, True, 400, "invalid_request_error"),
    ("body over the limit", "POST", CHAT, body(messages=[{"role": "user", "content": "x" * (2 * MAX_BODY)}]), JSON, True, 413, "invalid_request_error"),
    ("text/plain", "POST", CHAT, body(), {"Content-Type": "text/plain"}, True, 415, "invalid_request_error"),
    ("form encoded", "POST", CHAT, "a=b", {"Content-Type": "application/x-www-form-urlencoded"}, True, 415, "invalid_request_error"),
    ("unknown model", "POST", CHAT, body(model="gpt-17"), JSON, True, 404, "not_found_error"),
    ("no api key", "POST", CHAT, body(), JSON, False, 401, "authentication_error"),
    ("wrong api key", "POST", CHAT, body(), {**JSON, "Authorization": "Bearer nope"}, False, 401, "authentication_error"),
    ("basic auth", "GET", "/v1/models", None, {"Authorization": "Basic dGVzdC1rZXk6"}, False, 401, "authentication_error"),
    ("unknown route", "GET", "/v1/engines", None, {}, True, 404, "not_found_error"),
    ("unknown root route", "POST", "/admin", "{}", JSON, True, 404, "not_found_error"),
    ("GET chat", "GET", CHAT, None, {}, True, 405, "invalid_request_error"),
    ("DELETE models", "DELETE", "/v1/models", None, {}, True, 405, "invalid_request_error"),
    ("completions empty prompt list", "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": []}), JSON, True, 400, "invalid_request_error"),
    ("completions token out of vocab", "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": [1, 99999999]}), JSON, True, 400, "invalid_request_error"),
    ("completions negative token", "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": [-1]}), JSON, True, 400, "invalid_request_error"),
    ("completions logprobs 6", "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "logprobs": 6}), JSON, True, 400, "invalid_request_error"),
    ("completions prompt object", "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": {"a": 1}}), JSON, True, 400, "invalid_request_error"),
    ("completions fan-out", "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": ["x"] * 10, "n": 16}), JSON, True, 400, "invalid_request_error"),
]


@pytest.mark.parametrize("name,method,path,data,headers,auth,status,etype", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile(server, name, method, path, data, headers, auth, status, etype):
    got, resp_headers, text = server.request(method, path, data, headers=headers, auth=auth)
    assert got == status, text
    err = json.loads(text)["error"]
    assert err["type"] == etype
    assert isinstance(err["message"], str) and err["message"]
    assert "param" in err and "code" in err
    if name == "prompt over the context":
        assert err["code"] == "context_length_exceeded"
        assert str(CTX) in err["message"]
    if status == 405:
        assert "Allow" in resp_headers or "allow" in resp_headers


def test_still_healthy_after_hostile(server, client):
    assert server.request("GET", "/health")[0] == 200
    assert chat(client, max_tokens=2, temperature=0).choices[0].message.content == "\n\n"


def test_client_errors_never_500(server):
    """A sweep of odd field values: every answer is 200 or a 4xx, never a 5xx."""
    values = [None, True, -1, 0, 1, 2.5, 1e308, "", "x", [], [1], {}, {"a": 1}]
    fields = ["model", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs",
              "top_logprobs", "stream", "frequency_penalty", "presence_penalty", "top_k", "min_p",
              "repetition_penalty", "user", "max_completion_tokens", "stream_options"]
    for f in fields:
        for v in values:
            b = {"model": MODEL, "messages": OK_MSG, "max_tokens": 2, f: v}
            status, _, text = server.request("POST", CHAT, json.dumps(b), headers=JSON)
            assert status < 500, (f, v, text)
            if status >= 400:
                assert json.loads(text)["error"]["type"]


# ---------- load, cancellation, batch invariance ----------

def test_disconnect_cancels(server):
    """Drop a long stream after one chunk: the engine stops generating and frees the sequence."""
    gen_key = f'baimo_engine_generated_tokens{{model="{MODEL}"}}'
    before = server.metrics()[gen_key]
    c = server.conn()
    c.request("POST", CHAT, json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 10 * CTX, "temperature": 0, "stream": True}),
              {**server.auth(), **JSON})
    r = c.getresponse()
    events = sse_events(r)
    first = next(events)
    assert json.loads(first)["choices"][0]["delta"]["role"] == "assistant"
    next(events)
    c.sock.close()
    c.close()
    deadline = time.time() + 10
    while True:
        m = server.metrics()
        if m[f'baimo_running{{model="{MODEL}"}}'] == 0 and m[f'baimo_kv_blocks_used{{model="{MODEL}"}}'] == 0:
            break
        assert time.time() < deadline, m
        time.sleep(0.1)
    settled = server.metrics()[gen_key]
    time.sleep(0.5)
    assert server.metrics()[gen_key] == settled
    assert settled - before < CTX - 20, "the request ran to the end of the context instead of being cancelled"


def _cpu_has_vnni():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512_vnni"))


def test_batch_invariance(client, server):
    """A seeded request yields the same tokens alone and among 15 concurrent others (on AVX-512 VNNI CPUs with
    the weights kept packed for batches: `--pack-weights auto` is on for the tiny model)."""
    kw = dict(max_tokens=24, temperature=1.0, seed=77, logprobs=True)
    alone = chat(client, **kw)

    def other(i):
        return chat(client, max_tokens=24, temperature=0.9, seed=1000 + i,
                    messages=[{"role": "user", "content": f"Request {i}: tell me about topic {i * 7}"}])

    with ThreadPoolExecutor(16) as ex:
        futures = [ex.submit(other, i) for i in range(8)]
        mine = ex.submit(chat, client, **kw)
        futures += [ex.submit(other, i) for i in range(8, 15)]
        together = mine.result()
        [f.result() for f in futures]
    assert together.choices[0].message.content == alone.choices[0].message.content
    assert [t.token for t in together.choices[0].logprobs.content] == [t.token for t in alone.choices[0].logprobs.content]
    packed = server.metrics()["baimo_packed_weight_bytes"]
    if _cpu_has_vnni():
        assert packed > 0, "the batches ran without packed weights"
    else:
        assert packed == 0


def test_load_script(server):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "load_test.py"), "--base-url", server.base_url,
                          "--model", MODEL, "--api-key", API_KEY, "--requests", "16", "--concurrency", "4",
                          "--max-tokens", "16"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tokens/s" in out.stdout and "p99" in out.stdout


def test_queue_full_is_429():
    s = Server("--max-queue", "0")
    try:
        status, headers, text = s.request("POST", CHAT, body(), headers=JSON)
        assert status == 429, text
        assert json.loads(text)["error"]["type"] == "rate_limit_error"
        assert headers.get("retry-after") == "1" or headers.get("Retry-After") == "1"
    finally:
        assert s.stop() == 0


def test_graceful_shutdown():
    """SIGTERM mid-stream: new requests get 503, the stream in flight finishes, the process exits 0."""
    s = Server(ctx=2048)
    c = s.conn()
    c.request("POST", CHAT, json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 1500, "temperature": 0, "stream": True}),
              {**s.auth(), **JSON})
    r = c.getresponse()
    events = sse_events(r)
    next(events)
    next(events)
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    while True:
        status, headers, text = s.request("POST", CHAT, body(), headers=JSON)
        if status == 503:
            break
        assert status == 200 and time.time() < deadline, (status, text)
        time.sleep(0.05)
    assert json.loads(text)["error"]["type"] == "service_unavailable_error"
    assert "Retry-After" in headers or "retry-after" in headers
    assert s.request("GET", "/ready")[0] == 503
    rest = list(events)
    assert rest[-1] == "[DONE]"
    chunks = [json.loads(d) for d in rest[:-1]]
    assert any(ch["choices"] and ch["choices"][0]["finish_reason"] == "length" for ch in chunks)
    c.close()
    assert s.stop(timeout=60) == 0
