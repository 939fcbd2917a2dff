"""The judge client against a local chat-completions server started by the test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import maugpt.evaluation.judge as judge_module
from maugpt import commands
from maugpt.evaluation.http import retry_after
from maugpt.evaluation.judge import MACRO, POOLED, SYSTEM, Judge, failure_counts, judged_accuracy, parse_verdict


class ChatServer:
    """Answers chat completions: "correct" when the prediction equals the reference; a script of
    failures first (status codes, ``(status, Retry-After)``, "garbage" for an unreadable reply,
    "truncated" for a 200 whose body stops short of its Content-Length, "chatter" for a verdict
    after text with braces, "html" for a 200 whose body is not JSON, "huge" for a verdict after 5,000
    characters, "stall" for no reply until the server closes; None answers normally).

    ``gather``: the first requests wait (up to 10 s) until that many are in flight at once, so that
    a test of concurrency sees them overlap however slowly the machine runs the client's threads."""

    def __init__(self, failures: list = (), *, gather: int = 1) -> None:
        self.failures, self.calls, self.in_flight, self.most_in_flight = list(failures), 0, 0, 0
        self.systems: list[str] = []
        self.lock = threading.Lock()
        self.gathered, self.closing = threading.Event(), threading.Event()
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
                    if server.in_flight >= gather:
                        server.gathered.set()
                    failure = server.failures.pop(0) if server.failures else None
                    server.auth = self.headers.get("Authorization")
                    server.systems.append(body["messages"][0]["content"])
                server.gathered.wait(10)
                with server.lock:
                    server.in_flight -= 1
                if failure == "stall":  # until the test is done with it: longer than any timeout a test sets
                    server.closing.wait(30)
                    return
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
                content = {
                    "garbage": "garbage",
                    "chatter": "Scores {1} and {'x': 2} set {} aside: " + verdict,
                    "huge": "x" * 5000 + verdict,
                }.get(failure, "```json\n" + verdict + "\n```")
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                if failure == "html":
                    reply = b"<html>busy</html>"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply[:20] if failure == "truncated" else reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()


ROWS = [
    {
        "question": f"q{i}",
        "reference": "a crack",
        "prediction": "a crack" if i % 2 else "a scratch",
        "domain": "Mechanical Parts" if i < 4 else "Consumer Products",
        "style": "open",
    }
    for i in range(6)
]
ROWS.append({**ROWS[5], "question": "q6"})  # Consumer Products: 2 of 3 right; Mechanical Parts: 2 of 4


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def test_verdicts_accuracy_concurrency_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    server = ChatServer(gather=2)  # the first request waits for a second: two overlap however loaded the machine
    try:
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
    finally:
        server.close()


@pytest.mark.parametrize(
    "change",
    [
        {"model": "another-model"},
        {"system": SYSTEM + " Be strict."},
        {"template": "Q: {question}\nReference answer: {reference}\nAssistant's answer: {prediction}"},
        {"base_url": "other endpoint"},
    ],
)
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
    with pytest.raises(
        ValueError,
        match=r"must use the fields \['prediction', 'question', 'reference'\].*"
        r"it uses \['answer', 'question', 'reference'\]",
    ):
        Judge("http://127.0.0.1:9/v1", "m", tmp_path / "c.jsonl", template="{question} {reference} {answer}")


class Clock:
    """Stands in for the judge module's ``time``: records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


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


@pytest.mark.parametrize(
    "content, correct",
    [
        ('{"correct": true, "reason": "same"}', True),
        ('Sure! {"correct": false}', False),
        ('{"correct": "yes"}', None),
        ("CORRECT", None),
        ("{not json}", None),
        ('Rubric {a} {"b": 1}: {"correct": true}', True),  # braces before the verdict
        ('{"correct": true} on reflection {"correct": false, "reason": "missed the location"}', False),  # the last one
        ('{"verdict": {"correct": true}}', True),
    ],
)
def test_reply_parsing(content, correct):
    assert parse_verdict(content).correct is correct


def test_judge_tool_skips_without_an_endpoint_and_judges_with_one(server, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    rows = ROWS + [{"question": "d", "reference": "True", "prediction": "True", "style": "discriminative"}]
    predictions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tool = Path(__file__).parents[2] / "tools" / "judge.py"
    env = {k: v for k, v in os.environ.items() if k != "MAUGPT_JUDGE_BASE_URL"}
    skipped = subprocess.run(
        [sys.executable, str(tool), str(predictions)], capture_output=True, text=True, timeout=120, env=env
    )
    assert skipped.returncode == 0 and skipped.stdout.strip().splitlines() == [
        "judge skipped: no endpoint configured (pass --base_url or set MAUGPT_JUDGE_BASE_URL)"
    ]
    judged = subprocess.run(
        [sys.executable, str(tool), str(predictions), "--base_url", server.url, "--model", "m"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert judged.returncode == 0, judged.stderr
    lines = judged.stdout.splitlines()
    assert lines[2:6] == [
        "| Consumer Products | 66.67 | 3 | 0 |",
        "| Mechanical Parts | 50.00 | 4 | 0 |",
        "| mean of domains (macro) | 58.33 | 7 | 0 |",
        "| all answers (pooled) | 57.14 | 7 | 0 |",
    ]
    assert server.calls == 7  # the True/False row is not judged
    assert (tmp_path / "judge-m.jsonl").is_file()


def test_judge_tool_fails_when_too_many_answers_stay_unjudged(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    tool = Path(__file__).parents[2] / "tools" / "judge.py"
    server = ChatServer(failures=[400])  # one answer of seven is refused
    try:
        strict = subprocess.run(
            [sys.executable, str(tool), str(predictions), "--base_url", server.url, "--concurrency", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert strict.returncode == 1
        assert "| all answers (pooled) | 66.67 | 6 | 1 |" in strict.stdout  # q0 (wrong) unjudged: 4 of 6
        assert "WARNING: 1 of 7 answers (14.3 %) stayed unjudged, more than --max_unjudged 0.01" in strict.stderr
        server.failures = [400]
        lenient = subprocess.run(
            [sys.executable, str(tool), str(predictions), "--base_url", server.url, "--max_unjudged", "0.2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert lenient.returncode == 0 and "WARNING" not in lenient.stderr
    finally:
        server.close()


# Deadlines and size caps, against raw servers that misbehave on the wire.


class RawServer:
    """A TCP server on 127.0.0.1: reads each HTTP request whole, then hands the connection to
    ``reply``; records the connections, the requests read whole, the reply bytes sent and whether
    the client hung up first. The counts are kept under a condition that :meth:`wait_for` waits on:
    the client can return before the server's threads have counted what it sent."""

    def __init__(self, reply: Callable[[RawServer, socket.socket], None]) -> None:
        self.reply, self.connections, self.requests, self.sent = reply, 0, 0, 0
        self.stop, self.hung_up = threading.Event(), threading.Event()
        self.counted = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # so that the accept loop sees ``stop``
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.serving = threading.Thread(target=self._serve, daemon=True)
        self.serving.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self._count("connections")
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _count(self, name: str) -> None:
        with self.counted:
            setattr(self, name, getattr(self, name) + 1)
            self.counted.notify_all()

    def wait_for(self, *, connections: int, requests: int, timeout: float = 10) -> bool:
        """Whether the server has counted that many connections and whole requests within ``timeout``
        seconds (generous: only a loaded machine makes it wait at all)."""
        with self.counted:
            return self.counted.wait_for(lambda: self.connections >= connections and self.requests >= requests, timeout)

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            if self._read_request(connection):
                self._count("requests")
                try:
                    self.reply(self, connection)
                except OSError:  # broken pipe or reset: the client hung up
                    self.hung_up.set()

    @staticmethod
    def _read_request(connection: socket.socket) -> bool:
        """Reads one request whole; False if the client hung up first (recv returns b"" from then on)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        self.stop.set()
        self.serving.join()  # within the accept timeout; closing under a blocked accept would fail it
        self.listener.close()


def never_answer(server: RawServer, connection: socket.socket) -> None:
    server.stop.wait(30)


TRICKLED_HEAD = {
    "headers": b"HTTP/1.1 200 OK\r\n",
    "body": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
    # no length: the body ends at the close, so a cut must not pass for its end
    "unsized body": b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n",
}


def trickle(where: str) -> Callable[[RawServer, socket.socket], None]:
    """A reply that sends one byte every 0.2 s, in its headers or in its body (sized, or ending at
    the close): each byte comes well within the socket timeout, so only a total deadline ends it."""

    def reply(server: RawServer, connection: socket.socket) -> None:
        server.send(connection, TRICKLED_HEAD[where])
        for _ in range(1000):
            if server.stop.wait(0.2):
                return
            server.send(connection, b"x")

    return reply


HUGE = 16 << 20  # more than loopback's socket buffers hold, so the server notices a client that hangs up


def huge(with_length: bool) -> Callable[[RawServer, socket.socket], None]:
    def reply(server: RawServer, connection: socket.socket) -> None:
        length = f"Content-Length: {HUGE}\r\n" if with_length else ""  # without: the body ends at the close
        server.send(connection, f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n{length}\r\n".encode())
        for _ in range(HUGE >> 16):
            server.send(connection, b" " * (1 << 16))

    return reply


@pytest.fixture
def raw_server():
    servers = []

    def start(reply: Callable[[RawServer, socket.socket], None]) -> RawServer:
        servers.append(RawServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def timed_verdict(judge: Judge, question: str = "q") -> tuple[judge_module.Verdict, float]:
    start = time.monotonic()
    verdict = judge.judge([{"question": question, "reference": "a", "prediction": "a"}])[0]
    return verdict, time.monotonic() - start


def test_a_server_that_never_answers_is_cut_at_the_timeout(raw_server, tmp_path):
    server = raw_server(never_answer)
    judge = Judge(server.url, "m", tmp_path / "c.jsonl", timeout=0.5, retries=0)
    verdict, seconds = timed_verdict(judge)
    assert verdict == judge_module.Verdict(
        None, "judge request failed after 1 attempt(s): timeout: no complete reply within 0.5 s", "timeout"
    )
    assert seconds < 10  # returns at the deadline, not after 5 × 60 s
    assert server.wait_for(connections=1, requests=1) and server.connections == 1 and server.requests == 1


@pytest.mark.parametrize("where", ["headers", "body", "unsized body"])
def test_a_server_trickling_a_byte_every_fifth_of_a_second_is_cut_at_the_timeout(raw_server, tmp_path, where):
    server = raw_server(trickle(where))
    judge = Judge(server.url, "m", tmp_path / "c.jsonl", timeout=0.5, retries=0)
    verdict, seconds = timed_verdict(judge)
    assert verdict == judge_module.Verdict(
        None, "judge request failed after 1 attempt(s): timeout: no complete reply within 0.5 s", "timeout"
    )
    assert seconds < 10  # a socket timeout of 0.5 s alone would wait for all 1,000 bytes (200 s)
    assert server.hung_up.wait(5)  # the client closed the connection mid-reply


@pytest.mark.parametrize(
    "with_length, detail",
    [
        (True, f"reply too large: Content-Length {HUGE} bytes, more than max_reply_bytes 4096"),
        (False, "reply too large: more than max_reply_bytes 4096 (stopped reading after 4097 bytes)"),
    ],
)
def test_a_reply_over_the_cap_is_abandoned_unread(raw_server, tmp_path, with_length, detail):
    server = raw_server(huge(with_length))
    judge = Judge(server.url, "m", tmp_path / "c.jsonl", max_reply_bytes=4096, retries=3)
    verdict, seconds = timed_verdict(judge)
    # not retried: the same prompt would bring the same reply
    assert verdict == judge_module.Verdict(
        None, f"judge request failed after 1 attempt(s): {detail}", "reply too large"
    )
    assert server.hung_up.wait(5) and server.sent < HUGE  # the client hung up long before the end
    assert server.connections == 1 and seconds < 10


def test_http_errors_and_non_json_replies_are_counted_by_reason(tmp_path):
    server = ChatServer(failures=[503, 503, "html", "html", "garbage"])
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=1, backoff=0.01, concurrency=1)
        verdicts = judge.judge(ROWS[:4])
        assert [(v.reason, v.failure) for v in verdicts[:2]] == [
            ("judge request failed after 2 attempt(s): HTTP 503", "HTTP 503"),
            ("judge request failed after 2 attempt(s): reply is not JSON (17 bytes)", "not JSON"),
        ]
        assert verdicts[2].failure == "unreadable verdict" and verdicts[3] == judge_module.Verdict(True, "compared")
        assert failure_counts(verdicts) == {"HTTP 503": 1, "not JSON": 1, "unreadable verdict": 1}
        assert server.calls == 6
    finally:
        server.close()


def test_the_overall_deadline_leaves_the_pending_answers_unjudged(raw_server, tmp_path):
    server = raw_server(never_answer)
    judge = Judge(server.url, "m", tmp_path / "c.jsonl", timeout=30, retries=3, concurrency=2, deadline=0.5)
    start = time.monotonic()
    verdicts = judge.judge(ROWS[:6])
    assert time.monotonic() - start < 10  # cut at the run's 0.5 s, long before the request's 30 s
    during, before = (
        "overall deadline (0.5 s) passed during attempt 1",
        "overall deadline (0.5 s) passed before the request was sent",
    )
    assert [v.reason for v in verdicts] == [during] * 2 + [before] * 4  # two in flight, four never sent
    assert failure_counts(verdicts) == {"overall deadline": 6}
    # both cut requests reached the server whole; the four never sent opened no connection
    assert judge.requests == 2 and server.wait_for(connections=2, requests=2)
    assert server.connections == 2 and server.requests == 2


@pytest.mark.parametrize(
    "failures, waits, detail",
    [
        ([(503, "0.01"), (503, "30")], [0.01], "leaves no time for attempt 3 (a 30 s wait after HTTP 503)"),
        ([503], [], "leaves no time for attempt 2 (a 10 s wait after HTTP 503)"),
    ],
)  # the backoff's 10 s
def test_a_retry_is_not_waited_for_past_the_overall_deadline(tmp_path, monkeypatch, failures, waits, detail):
    clock = Clock()
    monkeypatch.setattr(judge_module, "time", clock)
    server = ChatServer(failures=failures)
    try:
        judge = Judge(server.url, "m", tmp_path / "c.jsonl", retries=3, backoff=10, deadline=5)
        verdict, _ = timed_verdict(judge)
        assert verdict == judge_module.Verdict(None, f"overall deadline (5 s) {detail}", "overall deadline")
        assert clock.waits == waits and server.calls == len(failures)
    finally:
        server.close()


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"timeout": 0}, "the judge's timeout is the seconds one request may take, more than 0; got 0"),
        ({"deadline": -1}, "the judge's deadline is the seconds a whole run may take, 0 for no limit; got -1"),
        ({"max_reply_bytes": 0}, "the judge's max_reply_bytes is a number of bytes, more than 0; got 0"),
        (
            {"base_url": "api.example.com/v1"},
            "the judge's base_url must be an http:// or https:// URL; got 'api.example.com/v1'",
        ),
    ],
)
def test_limits_and_the_endpoint_are_checked(tmp_path, limits, message):
    with pytest.raises(ValueError) as raised:
        Judge(**{"base_url": "http://127.0.0.1:9/v1", "model": "m", "cache": tmp_path / "c.jsonl", **limits})
    assert str(raised.value) == message


def test_the_judge_command_prints_why_answers_stayed_unjudged(tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    # q0, q1: 503; q2 judged (wrong); q3: not JSON; q4: 5 KB; q5 judged (right); q6: no reply in time
    server = ChatServer(failures=[503, 503, None, "html", "huge", None, "stall"])
    try:
        with pytest.raises(SystemExit) as exited:
            # 2 s: ample for a local reply on a loaded machine; the stalled request waits for it in full
            commands.judge(
                predictions, base_url=server.url, model="m", concurrency=1, retries=0, timeout=2, max_reply_bytes=4096
            )
    finally:
        server.close()
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "| answers | LLM-judged accuracy % (m) | judged | unjudged |",
        "|---|---:|---:|---:|",
        "| Consumer Products | 100.00 | 1 | 2 |",
        "| Mechanical Parts | 0.00 | 1 | 3 |",
        "| mean of domains (macro) | 50.00 | 2 | 5 |",
        "| all answers (pooled) | 50.00 | 2 | 5 |",
        "unjudged by reason: 2 HTTP 503, 1 not JSON, 1 reply too large, 1 timeout",
        f"requests sent: 7; verdict cache: {tmp_path / 'judge-m.jsonl'}",
    ]
    assert (
        "WARNING: 5 of 7 answers (71.4 %) stayed unjudged, more than --max_unjudged 0.01; they are left out of "
        "the accuracies above. Run again to ask for them (verdicts already given are cached)."
    ) in err.splitlines()


def test_progress_counts_each_answer_once_as_judged_cached_or_unjudged(tmp_path, capsys):
    from maugpt.commands import judge_with_progress

    server = ChatServer()
    try:
        judge = Judge(server.url, "judge-model", tmp_path / "cache.jsonl", concurrency=2)
        seen: list[str] = []
        judge.judge(ROWS[:3], progress=seen.append)
        assert sorted(seen) == ["judged"] * 3
        seen.clear()
        judge.judge(ROWS, progress=seen.append)  # the first three from the cache
        assert sorted(seen) == ["cached"] * 3 + ["judged"] * 4
        judge_with_progress(judge, ROWS)
        err = capsys.readouterr().err
        assert "judge: 100%" in err and "7/7" in err and "judged=0, cached=7, unjudged=0" in err
    finally:
        server.close()
