"""Reliability, bad input (issue 8.4): at least 10,000 frames generated with hypothesis (not JSON,
wrong types, huge strings and lists, unknown actions and types, negative and absurd numbers,
missing and unusable ids, unicode, deep nesting) sent to the agent process in bulk.

Every frame that is a JSON object with a usable id (a string of 1 to 128 characters) and is not
an ack or a cancel gets exactly one response, and that response is well formed (the fake relay
checks every frame against the protocol); the agent never dies and its RSS grows by less than
10 MB. Hypothesis runs derandomized (no random seed per run); the frames still vary a little
from run to run with the engine's own heuristics.
"""

from __future__ import annotations

import collections
import itertools
import json
import unittest
from typing import List, Optional, Tuple

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.relay.frames import MAX_MESSAGE_BYTES
from tests.agent_process import AgentStack
from tools.soak import Gauge, figures, status, wait_status

FAMILIES = 640  # hypothesis draws; each gives 16 frames
WARM_UP_FAMILIES = 64  # first, so imports and caches are in before RSS is measured
RSS_GROWTH_LIMIT_MB = 10.0
ACTIONS = (
    "status",
    "expirations",
    "quote",
    "fetch-chain",
    "fetch-prices",
    "sell-scan",
    "positions",
    "account-summary",
    "open-orders",
    "place-order",
    "cancel-order",
)
FIELDS = (
    "ticker",
    "tickers",
    "exchange",
    "contracts",
    "expiration",
    "expirations",
    "strike",
    "right",
    "rights",
    "min_days",
    "max_days",
    "strike_min",
    "strike_max",
    "strikes_around",
    "otm_min_pct",
    "otm_max_pct",
    "contract",
    "action",
    "quantity",
    "order_type",
    "limit_price",
    "tif",
    "account",
    "order_id",
    "sec_type",
)
ABSURD_NUMBERS = (-1, 0, -0.0, 1e308, -1e308, 2**63, -(2**63), 10**40, 1e-320, 0.5, 3.14159, 99999999)
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")  # JSON text Python's json reads as floats
NOT_JSON = ("", "{", "}", "nul", "{'id': 'x'}", '{"id": "x",}', "\x00\x01", "[1, 2", '{"type": "request", "id": ')


# ----- strategies ------------------------------------------------------------------------------

small_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(ABSURD_NUMBERS),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
junk = st.recursive(
    small_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=6,
)
# Huge values go into one frame of a family, not into the params every action gets: 10,000
# frames stay around 20 MB, so the run measures the agent, not the loopback.
big_size = st.sampled_from((1_000,) * 14 + (10_000,) * 5 + (100_000,))
huge_string = st.tuples(big_size, st.sampled_from("xé中😀\u202e\x00")).map(lambda t: t[1] * t[0])
huge_list = st.tuples(big_size, small_scalars).map(lambda t: [t[1]] * (t[0] // 10))
huge_value = st.one_of(
    huge_string,
    huge_list,
    huge_list.map(lambda v: {"contracts": v}),
    huge_string.map(lambda v: {"tickers": [v]}),
    huge_string.map(lambda v: {v: 1}),
)
shaped_params = st.dictionaries(  # the right names, the wrong values
    st.sampled_from(FIELDS), junk | st.lists(junk, max_size=3).map(lambda v: [v]), max_size=5
)
any_params = st.one_of(shaped_params, junk)
unknown_action = st.one_of(st.text(max_size=70), st.sampled_from(ACTIONS).map(str.upper), junk)
id_suffix = st.tuples(st.text(max_size=140) | st.sampled_from(("\u202e\x00", "😀" * 40)), st.integers(0, 19)).map(
    lambda t: t[0] + ("\ud800" if t[1] == 0 else "")
)  # a lone surrogate
SERIALS = itertools.count(1)  # ids must be unique, and derandomized hypothesis repeats values
unusable_id = st.one_of(
    st.just(""),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
    st.text(min_size=129, max_size=200),
)
frame_type = st.one_of(st.sampled_from(("request", "cancel", "ack", "response", "hello", "config", "")), junk)


@st.composite
def families(draw) -> List[Tuple[str, Optional[str]]]:
    """16 frames: (the text sent, the id that must be answered or None). One drawn set of
    params goes to every action (each validates it its own way), so a draw yields many frames."""
    serial = next(SERIALS)
    suffix = draw(id_suffix)
    new_id = (f"bad-{serial}-{n}:{suffix}"[:128] for n in itertools.count())
    out = []
    shaped = draw(shaped_params)
    for action in ACTIONS:  # real actions, params with the right names and the wrong values
        request_id = next(new_id)
        out.append((json.dumps({"type": "request", "id": request_id, "action": action, "params": shaped}), request_id))
    request_id = next(new_id)  # an unknown action, or one that is not a string
    out.append(
        (
            json.dumps(
                {"type": "request", "id": request_id, "action": draw(unknown_action), "params": draw(any_params)}
            ),
            request_id,
        )
    )
    request_id = next(new_id)  # a huge string or list, as the action, a param, a key or the params
    huge, where = draw(huge_value), draw(st.sampled_from(("action", "params", "field")))
    frame = {"type": "request", "id": request_id, "action": draw(st.sampled_from(ACTIONS)), "params": {}}
    if where == "field":
        frame["params"] = {draw(st.sampled_from(FIELDS)): huge}
    else:
        frame[where] = huge
    out.append((json.dumps(frame), request_id))
    # any type, usable id or not, fields missing now and then
    frame = {"type": draw(frame_type), "action": draw(st.sampled_from(ACTIONS)), "params": draw(any_params)}
    usable = draw(st.booleans())
    if usable:
        frame["id"] = request_id = next(new_id)
    elif draw(st.booleans()):
        frame["id"] = draw(unusable_id)
    for name in draw(st.lists(st.sampled_from(("type", "action", "params")), max_size=2)):
        frame.pop(name, None)
    out.append((json.dumps(frame), request_id if usable and frame.get("type") not in ("ack", "cancel") else None))
    # numbers JSON cannot hold but Python's json reads, in a real action's params
    request_id = next(new_id)
    out.append(
        (
            '{"type": "request", "id": %s, "action": "%s", "params": {"%s": %s}}'
            % (
                json.dumps(request_id),
                draw(st.sampled_from(ACTIONS)),
                draw(st.sampled_from(FIELDS)),
                draw(st.sampled_from(NON_FINITE)),
            ),
            request_id,
        )
    )
    # not JSON at all, not an object, or nested deeper than any parser should have to go
    depth = draw(st.sampled_from((0, 0, 0, 10, 300, 5000)))
    if depth:
        request_id = next(new_id)
        text = '{"type": "request", "id": %s, "action": "status", "params": {"x": %s}}' % (
            json.dumps(request_id),
            "[" * depth + "]" * depth,
        )
        out.append((text, request_id if depth <= 300 else None))
    else:
        out.append((draw(st.sampled_from(NOT_JSON) | st.text(max_size=30).filter(_not_a_json_object)), None))
    return out


def _not_a_json_object(text: str) -> bool:
    try:
        return not isinstance(json.loads(text), dict)
    except ValueError:
        return True


def generate(count: int, sink) -> List[str]:
    """Draw `count` families (derandomized) and hand each frame to sink(text, answered_id); returns
    what sink raised (collected, not raised: hypothesis would print megabytes of frames)."""
    problems: List[str] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(families())
    def draw(family):
        for text, answered_id in family:
            try:
                sink(text, answered_id)
            except Exception as exc:
                problems.append(f"{exc!r} sending {text[:200]!r}")

    draw()
    return problems


# ----- the test ----------------------------------------------------------------------------------


class BadInput(unittest.TestCase):
    def test_generated_frames_get_structured_answers_and_the_agent_lives_within_10_mb(self):
        with AgentStack() as stack:
            relay, agent = stack.relay, stack.agent
            wait_status(relay, lambda s: s["connected"], 60, "agent connected")
            sent = collections.Counter()
            expected: List[str] = []

            def send(text: str, answered_id: Optional[str]) -> None:
                relay.send_raw(text)
                size = len(text.encode("utf-8", "surrogatepass"))
                sent["frames"] += 1
                sent["bytes"] += size
                if size > MAX_MESSAGE_BYTES:
                    sent["over_limit"] += 1  # DESIGN.md 4: dropped unread, never answered
                elif answered_id is not None:
                    expected.append(answered_id)

            problems = generate(WARM_UP_FAMILIES, send)
            relay.wait_until(lambda: all(i in relay.responses for i in expected), 120, "warm-up answers")
            gauge = Gauge(agent.pid)
            rss_before, threads_before = gauge.rss_mb(), gauge.threads()
            warm_up_frames, warm_up_expected = sent["frames"], len(expected)
            problems += generate(FAMILIES, send)
            relay.wait_until(lambda: all(i in relay.responses for i in expected), 300, "every answer")
            status(relay)  # one more round trip: any second answer to a frame would be in by now
            rss_after, threads_after = gauge.rss_mb(), gauge.threads()
            alive = agent.process.poll() is None
            self.assertTrue(relay.connected)
            self.assertEqual(relay.connections, 1)
        self.assertEqual(problems, [])
        frames = sent["frames"] - warm_up_frames
        self.assertGreaterEqual(frames, 10_000)
        self.assertTrue(alive, "the agent died")
        self.assertEqual(relay.violations, [])
        self.assertEqual(len(set(expected)), len(expected))
        self.assertEqual({relay.response_counts[i] for i in expected}, {1})
        answered = set(expected)
        extra = [i for i in relay.response_counts if i not in answered and not i.startswith("req-")]
        self.assertEqual(extra, [], "answers to frames that should have none")
        codes = collections.Counter(
            "ok" if relay.responses[i]["ok"] else relay.responses[i]["error"]["code"] for i in expected
        )
        self.assertLess(rss_after - rss_before, RSS_GROWTH_LIMIT_MB)
        self.assertLessEqual(threads_after, threads_before)
        figures(
            "bad input",
            frames=frames,
            megabytes=round(sent["bytes"] / 2**20, 1),
            over_1_mib=sent["over_limit"],
            answered=len(expected) - warm_up_expected,
            answers_by_code=dict(codes.most_common()),
            rss_before_mb=round(rss_before, 1),
            rss_after_mb=round(rss_after, 1),
            rss_growth_mb=round(rss_after - rss_before, 1),
            threads=f"{threads_before}->{threads_after}",
            error_lines=agent.output.count(" Error: "),
            logging_errors=agent.output.count("--- Logging error ---"),
        )


if __name__ == "__main__":
    unittest.main()
