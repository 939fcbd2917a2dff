"""The judge client against a local chat-completions server started by the test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import maugpt.evaluation.judge as judge_module
from maugpt.evaluation.judge import MACRO, POOLED, SYSTEM, Judge, judged_accuracy, parse_verdict, retry_after


class ChatServer:
    """Answers chat completions: "correct" when the prediction equals the reference; a script of
    failures first (status codes, ``(status, Retry-After)``, "garbage" for an unreadable reply,
    "truncated" for a 200 whose body stops short of its Content-Length, "chatter" for a verdict
    after text with braces)."""

    def __init__(self, failures: list = ()) -> None:
        self.failures, self.calls, self.in_flight, self.most_in_flight = list(failures), 0, 0, 0
        self.systems: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.calls += 1
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                    failure = server.failures.pop(0) if server.failures else None
                    server.auth = self.headers.get("Authorization")
                    server.systems.append(body["messages"][0]["content"])
                time.sleep(0.05)
                with server.lock:
                    server.in_flight -= 1
                if isinstance(failure, (int, tuple)):
                    status, wait = (failure, None) if isinstance(failure, int) else failure
                    self.send_response(status)
                    if wait is not None:
                        self.send_header("Retry-After", wait)
                    self.end_headers()
                    return
                user = body["messages"][1]["content"]
                reference = user.split("Reference answer: ")[1].split("\n")[0]
                prediction = user.split("Assistant's answer: ")[1]
                verdict = json.dumps({"correct": prediction == reference, "reason": "compared"})
                content = {"garbage": "garbage", "chatter": "Scores {1} and {'x': 2} set {} aside: " + verdict
                           }.get(failure, "```json\n" + verdict + "\n```")
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply[:20] if failure == "truncated" else reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


ROWS = [{"question": f"q{i}", "reference": "a crack", "prediction": "a crack" if i % 2 else "a scratch",
         "domain": "Mechanical Parts" if i < 4 else "Consumer Products", "style": "open"} for i in range(6)]
ROWS.append({**ROWS[5], "question": "q6"})  # Consumer Products: 2 of 3 right; Mechanical Parts: 2 of 4


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def test_verdicts_accuracy_concurrency_and_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = Judge(server.url, "judge-model", tmp_path / "cache.jsonl", api_key_env="JUDGE_KEY", concurrency=2)
    verdicts = judge.judge(ROWS)
    assert [v.correct for v in verdicts] == [False, True, False, True, False, True, True]
    assert server.calls == 7 and server.most_in_flight == 2 and server.auth == "Bearer sk-test"
    table = judged_accuracy(ROWS, verdicts)
    assert table[POOLED] == {"accuracy": pytest.approx(400 / 7), "judged": 7, "unjudged": 0}
    assert table["Mechanical Parts"]["accuracy"] == 50.0 and table["Consumer Products"]["judged"] == 3
    assert table[MACRO]["accuracy"] == pytest.approx((50 + 200 / 3) / 2)  # the mean of the two domains
    again = Judge(server.url, "judge-model", tmp_path / "cache.jsonl", concurrency=2)
    assert [v.correct for v in again.judge(ROWS)] == [v.correct for v in verdicts]
    assert server.calls == 7 and again.requests == 0  # all from the cache


@pytest.mark.parametrize("change", [
    {"model": "another-model"}, {"system": SYSTEM + " Be strict."},
    {"template": "Q: {question}\nReference answer: {reference}\nAssistant's answer: {prediction}"},
    {"base_url": "other endpoint"}])
def test_a_verdict_is_reused_only_for_the_same_endpoint_model_and_prompt(server, tmp_path, change):
    Judge(server.url, "judge-model", tmp_path / "cache.jsonl").judge(ROWS[:1])
    assert server.calls == 1
    args = {"base_url": server.url, "model": "judge-model", **change}
    if args["base_url"] == "other endpoint":  # the same server under another name
        args["base_url"] = server.url.replace("127.0.0.1", "localhost")
    judge = Judge(cache=tmp_path / "cache.jsonl", **args)
    judge.judge(ROWS[:1])
    assert server.calls == 2 and judge.requests == 1  # asked again, not served the old verdict
    assert server.systems[-1] == change.get("system", SYSTEM)


def test_a_template_must_name_the_three_fields(tmp_path):
    with pytest.raises(ValueError, match=r"must use the fields \['prediction', 'question', 'reference'\].*"
                                         r"it uses \['answer', 'question', 'reference'\]"):
        Judge("http://127.0.0.1:9/v1", "m", tmp_path / "c.jsonl", template="{question} {reference} {answer}")


class Clock:
    """Stands in for the judge module's ``time``: records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    time = staticmethod(time.time)


def test_retries_with_backoff_then_succeeds(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(judge_module, "time", clock)
    server = ChatServer(failures=[503, 429])
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=3, backoff=0.5)
        assert judge.verdict("q", "a crack", "a crack").correct is True
        assert server.calls == 3 and clock.waits == [0.5, 1.0]
    finally:
        server.close()


def test_retry_after_is_honoured_up_to_max_wait(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(judge_module, "time", clock)
    server = ChatServer(failures=[(429, "3"), (503, "900"), 503])
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=3, backoff=0.5, max_wait=60)
        assert judge.verdict("q", "a crack", "a crack").correct is True
        assert clock.waits == [3.0, 60.0, 2.0]  # the server's 3 s, its 900 s capped, then backoff (0.5 × 2²)
    finally:
        server.close()


def test_retry_after_as_an_http_date():
    import email.utils
    import urllib.error

    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    error = urllib.error.HTTPError("u", 503, "busy", {"Retry-After": when}, None)
    assert 28 <= retry_after(error) <= 30
    assert retry_after(urllib.error.HTTPError("u", 503, "busy", {"Retry-After": "soon"}, None)) is None


def test_a_truncated_reply_is_asked_again_and_chatter_around_the_verdict_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(judge_module, "time", Clock())
    server = ChatServer(failures=["truncated", "chatter"])
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=2, concurrency=1)
        first = judge.verdict("q1", "a crack", "a crack")  # truncated 200, then a clean reply
        assert first.correct is True and server.calls == 2
        second = judge.verdict("q2", "a crack", "a scratch")  # the verdict after "{1} and {'x': 2}"
        assert second.correct is False and second.reason == "compared"
        cut = ChatServer(failures=["truncated"] * 3)
        try:
            failed = Judge(cut.url, "m", tmp_path / "d.jsonl", retries=2).verdict("q", "a", "a")
            assert failed.correct is None and "after 3 attempt(s): request failed: IncompleteRead" in failed.reason
        finally:
            cut.close()
    finally:
        server.close()


def test_failures_and_unreadable_replies_are_unjudged_never_correct(tmp_path):
    server = ChatServer(failures=["garbage", 400, 503, 503])
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=1, backoff=0.01, concurrency=1)
        garbage = judge.verdict("q1", "a", "a")
        assert garbage.correct is None and "unreadable judge reply: 'garbage'" in garbage.reason
        assert judge.verdict("q2", "a", "a").reason == "judge request failed after 1 attempt(s): HTTP 400"
        assert judge.verdict("q3", "a", "a").reason == "judge request failed after 2 attempt(s): HTTP 503"
        assert not (tmp_path / "c.jsonl").exists()  # nothing judged, nothing cached
        assert judge.verdict("q1", "a", "a").correct is True  # unjudged ones are asked again
        table = judged_accuracy([{"domain": "x"}] * 2, [garbage, judge.verdict("q1", "a", "a")])
        assert table[POOLED] == {"accuracy": 100.0, "judged": 1, "unjudged": 1}
    finally:
        server.close()


@pytest.mark.parametrize("content, correct", [
    ('{"correct": true, "reason": "same"}', True), ('Sure! {"correct": false}', False),
    ('{"correct": "yes"}', None), ("CORRECT", None), ("{not json}", None),
    ('Rubric {a} {"b": 1}: {"correct": true}', True),  # braces before the verdict
    ('{"correct": true} on reflection {"correct": false, "reason": "missed the location"}', False),  # the last one
    ('{"verdict": {"correct": true}}', True)])
def test_reply_parsing(content, correct):
    assert parse_verdict(content).correct is correct


def test_judge_tool_skips_without_an_endpoint_and_judges_with_one(server, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    rows = ROWS + [{"question": "d", "reference": "True", "prediction": "True", "style": "discriminative"}]
    predictions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tool = Path(__file__).parents[2] / "tools" / "judge.py"
    env = {k: v for k, v in os.environ.items() if k != "MAUGPT_JUDGE_BASE_URL"}
    skipped = subprocess.run([sys.executable, str(tool), str(predictions)], capture_output=True, text=True,
                             timeout=120, env=env)
    assert skipped.returncode == 0 and skipped.stdout.strip().splitlines() == [
        "judge skipped: no endpoint configured (pass --base_url or set MAUGPT_JUDGE_BASE_URL)"]
    judged = subprocess.run([sys.executable, str(tool), str(predictions), "--base_url", server.url, "--model", "m"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert judged.returncode == 0, judged.stderr
    lines = judged.stdout.splitlines()
    assert lines[2:6] == ["| Consumer Products | 66.67 | 3 | 0 |", "| Mechanical Parts | 50.00 | 4 | 0 |",
                          "| mean of domains (macro) | 58.33 | 7 | 0 |", "| all answers (pooled) | 57.14 | 7 | 0 |"]
    assert server.calls == 7  # the True/False row is not judged
    assert (tmp_path / "judge-m.jsonl").is_file()


def test_judge_tool_fails_when_too_many_answers_stay_unjudged(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    tool = Path(__file__).parents[2] / "tools" / "judge.py"
    server = ChatServer(failures=[400])  # one answer of seven is refused
    try:
        strict = subprocess.run([sys.executable, str(tool), str(predictions), "--base_url", server.url,
                                 "--concurrency", "1"], capture_output=True, text=True, timeout=120)
        assert strict.returncode == 1
        assert "| all answers (pooled) | 66.67 | 6 | 1 |" in strict.stdout  # q0 (wrong) unjudged: 4 of 6
        assert ("WARNING: 1 of 7 answers (14.3 %) stayed unjudged, more than --max_unjudged 0.01"
                in strict.stderr)
        server.failures = [400]
        lenient = subprocess.run([sys.executable, str(tool), str(predictions), "--base_url", server.url,
                                  "--max_unjudged", "0.2"], capture_output=True, text=True, timeout=120)
        assert lenient.returncode == 0 and "WARNING" not in lenient.stderr
    finally:
        server.close()
