"""The fixtures' bounded JSON grammars (tests/fixtures/core/grammar.py): what a grammar admits is
valid JSON of the schema, and its longest text, measured, fits the request's budget."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from jsonschema import Draft202012Validator

from tests.fixtures.core.grammar import (
    INF,
    Alt,
    Cls,
    Lit,
    Ref,
    Rep,
    bounded_json_grammar,
    longest_bytes,
    parse_gbnf,
)
from tests.fixtures.core.tools import tool_output, tool_schema
from tests.fixtures.tgi_server import tool_grammar_schema

# Characters a negated class may stand for, the widest last (1 to 4 UTF-8 bytes).
CANDIDATES = ['"', "\\", "\n", "a", " ", "é", "中", "😀"]


def sample(rules: dict[str, Alt], rng: random.Random, widest: bool) -> str:
    """A text the grammar admits: random, or (``widest``) the longest in bytes."""
    memo: dict[int, float] = {}

    def size(node: Any) -> float:
        key = id(node)
        if key not in memo:
            memo[key] = longest_bytes({**rules, "root": Alt([[node]])})
        return memo[key]

    def gen(node: Any) -> str:
        if isinstance(node, Lit):
            return json.loads(node.raw.replace("\\x", "\\u00")) if node.raw != '""' else ""
        if isinstance(node, Cls):
            chars = [c for c in CANDIDATES if node.matches(ord(c))]
            chars += [chr(lo) for lo, _ in node.ranges if node.matches(lo)]
            if widest:
                return max(chars, key=lambda c: len(c.encode()))
            return rng.choice(chars)
        if isinstance(node, Ref):
            return gen(rules[node.name])
        if isinstance(node, Alt):
            seq = (
                max(node.seqs, key=lambda q: sum(size(n) for n in q))
                if widest
                else (rng.choice(node.seqs))
            )
            return "".join(gen(n) for n in seq)
        assert isinstance(node, Rep) and node.hi is not None
        count = node.hi if widest else rng.randint(node.lo, node.hi)
        return "".join(gen(node.node) for _ in range(count))

    return gen(rules["root"])


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
JOKE = {
    "type": "object",
    "properties": {
        "setup": {"type": "string"},
        "punchline": {"type": "string", "maxLength": 500},
        "rating": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {"type": "object"},
    },
    "required": ["setup", "punchline"],
}
SCHEMAS = {
    "tgi tool grammar": tool_grammar_schema([WEATHER]),
    "tool or plain answer": tool_schema([WEATHER], with_no_tool=True),
    "json_object": {"type": "object"},
    "joke": JOKE,
    "untyped": {"properties": {"x": {}}, "required": ["x"], "additionalProperties": True},
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("budget", [24, 60, 100, 400, 4096])
def test_every_admitted_text_is_valid_json_within_the_budget(name: str, budget: int) -> None:
    schema = SCHEMAS[name]
    bounded = bounded_json_grammar(schema, budget)
    rules = parse_gbnf(bounded.gbnf)
    assert longest_bytes(rules) == bounded.longest_bytes < INF
    if bounded.fits:
        assert bounded.longest_bytes + 1 <= budget
    validator = Draft202012Validator(schema)
    rng = random.Random(f"{name}-{budget}")
    widest = sample(rules, rng, widest=True)
    assert len(widest.encode()) == bounded.longest_bytes  # the bound is exact, not loose
    for text in [widest, *(sample(rules, rng, widest=False) for _ in range(200))]:
        value = json.loads(text)  # strict: no raw control characters in strings
        assert not list(validator.iter_errors(value)), text


def test_the_bounds_are_as_generous_as_the_budget_allows() -> None:
    joke = {
        "type": "object",
        "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
        "required": ["setup", "punchline"],
    }
    small, large = (bounded_json_grammar(joke, n) for n in (100, 4096))
    assert small.fits and large.fits
    assert 0 < small.max_string_chars < large.max_string_chars
    # {"setup":"","punchline":""} is 27 bytes; each character may take 4 (one token each).
    assert small.max_string_chars == (100 - 1 - 27) // (2 * 4)
    bigger = bounded_json_grammar(joke, 100 + 2 * 4)  # room for one more character per string
    assert bigger.max_string_chars == small.max_string_chars + 1


def test_a_budget_below_the_shortest_json_gets_the_fallback_bounds() -> None:
    bounded = bounded_json_grammar(SCHEMAS["tgi tool grammar"], 40)
    shortest = len('{"function":{"_name":"get_weather","city":""}}')
    assert shortest + 1 > 40 and not bounded.fits
    assert (bounded.max_string_chars, bounded.max_items) == (12, 1)
    days = len(',"days":-99999999')
    assert bounded.longest_bytes == shortest + 4 * 12 + days


def test_longest_bytes_of_hand_written_grammars() -> None:
    assert longest_bytes(parse_gbnf('root ::= "ab" [é] x?\nx ::= "中"{2,3}')) == 2 + 2 + 9
    assert longest_bytes(parse_gbnf("root ::= [a-z]*")) == INF
    assert longest_bytes(parse_gbnf('root ::= x\nx ::= "(" x ")" | ""')) == INF
    assert longest_bytes(parse_gbnf("root ::= [^a]{0,2} # a comment")) == 8


def test_a_cut_call_reads_as_the_openai_wire_sends_it() -> None:
    _, calls, finish = tool_output('{"name":"get_weather","arguments":{"city":"Pa', "length")
    assert calls is not None and calls[0]["function"]["arguments"] == '{"city":"Pa'
    assert finish == "length"
    content, calls, _ = tool_output('{"name":"no_tool","arguments":{"content":"Hi \\"t', "length")
    assert (content, calls) == ('Hi "t', None)
    assert tool_output('{"name":"get_w', "length") == ("", None, "length")


# ---- the grammar against SmolLM2's real vocabulary, with an adversary for a model ----------


class VocabularyWalker:
    """Drives llama.cpp's own grammar sampler over SmolLM2's vocabulary without the model: the
    "model" is an adversary that writes as long as the grammar lets it (the shortest pieces,
    closing quotes and brackets last), or picks allowed tokens at random. No evaluation, so no
    luck: what the grammar admits is all that decides."""

    def __init__(self, gguf: str) -> None:
        import ctypes

        import llama_cpp
        import numpy as np

        self.ctypes, self.lc, self.np = ctypes, llama_cpp, np
        self.llm = llama_cpp.Llama(gguf, vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab
        self.n = self.llm.n_vocab()
        self.pieces = [self.llm.detokenize([t], special=True) for t in range(self.n)]
        self.eog = np.array([llama_cpp.llama_vocab_is_eog(self.vocab, t) for t in range(self.n)])
        self.length = np.array([len(p) for p in self.pieces], dtype=np.float32)
        self.closes = np.array([any(c in p for c in b'"}]') for p in self.pieces])
        self.dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)
        assert self.dtype.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)

    def walk(self, gbnf: str, adversary: str, rng: random.Random) -> tuple[str, int]:
        """(text, tokens) of one answer: tokens until only the end of turn is allowed."""
        lc, np = self.lc, self.np
        sampler = lc.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        assert sampler, "llama.cpp refused the grammar"
        out, count = b"", 0
        try:
            while True:
                arr = np.zeros(self.n, dtype=self.dtype)
                arr["id"] = np.arange(self.n)
                data = arr.ctypes.data_as(self.ctypes.POINTER(lc.llama_token_data))
                cur = lc.llama_token_data_array(data=data, size=self.n, selected=-1, sorted=False)
                lc.llama_sampler_apply(sampler, self.ctypes.byref(cur))
                allowed = arr["id"][np.isfinite(arr["logit"])]
                assert len(allowed), f"a dead end after {out!r}"
                more = allowed[~self.eog[allowed]]
                if len(more) == 0:
                    return (
                        out.decode(errors="replace"),
                        count,
                    )  # complete: only the end of turn is left (decoded as the fixtures decode)
                if adversary == "longest":
                    score = -self.length[more] - 1000 * self.closes[more]
                    more = more[score == score.max()]
                token = int(more[rng.randrange(len(more))])
                lc.llama_sampler_accept(sampler, token)
                out += self.pieces[token]
                count += 1
                assert count < 10_000, "the grammar runs away"
        finally:
            lc.llama_sampler_free(sampler)


def _without_numeric_bounds(schema: Any) -> Any:
    """The schema less the bounds llama.cpp's converter does not enforce (magic_function's
    -1000 < input < 1000): a limit of the fixtures' grammars, not what this file tests."""
    if isinstance(schema, list):
        return [_without_numeric_bounds(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    drop = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    return {k: _without_numeric_bounds(v) for k, v in schema.items() if k not in drop}


@pytest.fixture(scope="module")
def walker(gguf_path: str) -> VocabularyWalker:
    return VocabularyWalker(gguf_path)


def _suite_schemas() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The JSON the standard suites ask the fixtures for: (response schema or {}, tools)."""
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
    from langchain_tests.integration_tests import chat_models as suite

    @tool
    def my_adder_tool(a: int, b: int) -> int:
        """Adds a and b."""
        return a + b

    def as_tool(t: Any) -> dict[str, Any]:
        return convert_to_openai_tool(t)

    joke, _ = suite._get_joke_class("pydantic")
    prompt = suite.ChatPromptTemplate.from_messages(
        [("human", "Hi in the style of {answer_style}.")]
    )
    chain = prompt | suite.GenericFakeChatModel(messages=iter(["hi"])) | suite.StrOutputParser()
    greeting = chain.as_tool(name="greeting_generator", description="Generate a greeting.")
    return {
        "magic_function": ({}, [as_tool(suite.magic_function)]),
        "magic_function_no_args": ({}, [as_tool(suite.magic_function_no_args)]),
        "greeting_generator": ({}, [as_tool(greeting)]),
        "unicode_customer": ({}, [as_tool(suite.unicode_customer)]),
        "two tools": ({}, [as_tool(suite.magic_function), as_tool(my_adder_tool)]),
        "joke": (convert_to_json_schema(joke), []),
    }


def _forms(name: str) -> list[tuple[str, dict[str, Any]]]:
    """The grammars' schemas for one case: each fixture's tool forms, or the response schema."""
    from tests.fixtures.tgi_server import NO_TOOL

    response, tools = _suite_schemas()[name]
    if not tools:
        return [("response_format", response)]
    return [
        ("tgi required", tool_grammar_schema(tools)),
        ("tgi auto", tool_grammar_schema([*tools, NO_TOOL])),
        ("openai-wire required", tool_schema(tools, with_no_tool=False)),
        ("openai-wire auto", tool_schema(tools, with_no_tool=True)),
    ]


SUITE_CASES = [
    "greeting_generator",
    "joke",
    "magic_function",
    "magic_function_no_args",
    "two tools",
    "unicode_customer",
]


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("name", SUITE_CASES)
def test_no_answer_runs_past_the_budget_whatever_the_model_writes(
    walker: VocabularyWalker, name: str
) -> None:
    """What broke `make test` on another CPU: a forced call that ran past max_tokens=100."""
    for form, schema in _forms(name):
        for budget in (100,):  # the standard suites' max_tokens
            bounded = bounded_json_grammar(schema, budget)
            assert bounded.fits, (form, budget)
            validator = Draft202012Validator(_without_numeric_bounds(schema))
            for adversary, seed in (("longest", 0), ("random", 1)):
                text, tokens = walker.walk(bounded.gbnf, adversary, random.Random(seed))
                where = (form, budget, adversary, seed, text)
                assert tokens + 1 <= budget, where  # and the end of turn
                assert not list(validator.iter_errors(json.loads(text))), where
