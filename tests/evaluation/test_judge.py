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

from maugpt.evaluation.judge import Judge, judged_accuracy, parse_verdict


class ChatServer:
    """Answers chat completions: "correct" when the prediction equals the reference; a script of
    failures first (status codes, or "garbage" for an unreadable reply)."""

    def __init__(self, failures: list = ()) -> None:
        self.failures, self.calls, self.in_flight, self.most_in_flight = list(failures), 0, 0, 0
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
                time.sleep(0.05)
                with server.lock:
                    server.in_flight -= 1
                if isinstance(failure, int):
                    self.send_response(failure)
                    self.end_headers()
                    return
                user = body["messages"][1]["content"]
                reference = user.split("Reference answer: ")[1].split("\n")[0]
                prediction = user.split("Assistant's answer: ")[1]
                content = "garbage" if failure == "garbage" else "```json\n" + json.dumps(
                    {"correct": prediction == reference, "reason": "compared"}) + "\n```"
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


ROWS = [{"question": f"q{i}", "reference": "a crack", "prediction": "a crack" if i % 2 else "a scratch",
         "domain": "Mechanical Parts" if i < 4 else "Consumer Products", "style": "open"} for i in range(6)]


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def test_verdicts_accuracy_concurrency_and_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = Judge(server.url, "judge-model", tmp_path / "cache.jsonl", api_key_env="JUDGE_KEY", concurrency=2)
    verdicts = judge.judge(ROWS)
    assert [v.correct for v in verdicts] == [False, True, False, True, False, True]
    assert server.calls == 6 and server.most_in_flight == 2 and server.auth == "Bearer sk-test"
    table = judged_accuracy(ROWS, verdicts)
    assert table["all"] == {"accuracy": 50.0, "judged": 6, "unjudged": 0}
    assert table["Mechanical Parts"]["accuracy"] == 50.0 and table["Consumer Products"]["judged"] == 2
    again = Judge(server.url, "judge-model", tmp_path / "cache.jsonl", concurrency=2)
    assert [v.correct for v in again.judge(ROWS)] == [v.correct for v in verdicts]
    assert server.calls == 6 and again.requests == 0  # all from the cache
    other = Judge(server.url, "another-model", tmp_path / "cache.jsonl")
    other.judge(ROWS[:1])
    assert server.calls == 7  # the cache is per judge model


def test_retries_with_backoff_then_succeeds(tmp_path):
    server = ChatServer(failures=[503, 429])
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=3, backoff=0.01)
        assert judge.verdict("q", "a crack", "a crack").correct is True
        assert server.calls == 3
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
        assert table["all"] == {"accuracy": 100.0, "judged": 1, "unjudged": 1}
    finally:
        server.close()


@pytest.mark.parametrize("content, correct", [
    ('{"correct": true, "reason": "same"}', True), ('Sure! {"correct": false}', False),
    ('{"correct": "yes"}', None), ("CORRECT", None), ("{not json}", None)])
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
    assert "| all | 50.00 | 6 | 0 |" in judged.stdout and server.calls == 6  # the True/False row is not judged
    assert (tmp_path / "judge-m.jsonl").is_file()
