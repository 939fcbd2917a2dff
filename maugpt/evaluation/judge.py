"""LLM-judged accuracy of open-ended answers (the paper's Table 3, which used GPT-4o).

Any OpenAI-compatible chat-completions endpoint can judge: the judge sees the question, the
reference answer and the prediction and replies ``{"correct": true|false, "reason": "..."}``.
Verdicts are cached on disk (JSON lines keyed by a hash of the model, prompt and texts), so
re-scoring never asks twice; requests run with bounded concurrency and retry with exponential
backoff on rate limits, server errors and timeouts. A reply that cannot be read is counted as
unjudged, never as correct.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROMPT_VERSION = 1
SYSTEM = ("You grade answers of an industrial visual-inspection assistant. Compare the assistant's answer "
          "with the reference answer to the same question about a product image. The answer is correct if "
          "it states the same facts as the reference (wording may differ); it is incorrect if it contradicts "
          "the reference, misses its key fact, or names a different defect, location or cause. Reply with "
          'JSON only: {"correct": true or false, "reason": "<one sentence>"}.')
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Verdict:
    correct: bool | None  # None: unjudged (unreadable reply or failed request)
    reason: str


def parse_verdict(content: str) -> Verdict:
    """The judge's reply as a verdict; anything but a JSON object with a boolean ``correct`` is unjudged."""
    match = re.search(r"\{.*\}", content, flags=re.DOTALL)  # tolerate code fences and chatter around it
    try:
        reply = json.loads(match.group(0)) if match else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("correct"), bool):
        return Verdict(None, f"unreadable judge reply: {content[:200]!r}")
    return Verdict(reply["correct"], str(reply.get("reason", "")))


class Judge:
    """A chat-completions judge with an on-disk cache.

    Args:
        base_url: the endpoint's base URL (``…/v1``); requests go to ``{base_url}/chat/completions``.
        model: the judge model's name.
        cache: JSON-lines file of earlier verdicts (created if missing).
        api_key_env: environment variable holding the API key (sent as a Bearer token if set).
        concurrency: requests in flight at most.
        retries: further attempts after a failed request.
        backoff: seconds before the first retry; doubled each time.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, model: str, cache: str | Path, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, retries: int = 4, backoff: float = 1.0, timeout: float = 60.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.retries = model, concurrency, retries
        self.backoff, self.timeout = backoff, timeout
        self.api_key = os.environ.get(api_key_env)
        self.cache_path = Path(cache)
        self.cache = self._load_cache()
        self._lock = threading.Lock()
        self.requests = 0

    def _load_cache(self) -> dict[str, Verdict]:
        cache = {}
        if self.cache_path.is_file():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    cache[row["key"]] = Verdict(row["correct"], row["reason"])
                except (ValueError, KeyError):
                    continue  # a line cut by a killed run: that verdict is asked again
        return cache

    def key(self, question: str, reference: str, prediction: str) -> str:
        text = json.dumps([PROMPT_VERSION, self.model, question, reference, prediction])
        return hashlib.sha256(text.encode()).hexdigest()

    def _request(self, question: str, reference: str, prediction: str) -> Verdict:
        body = json.dumps({"model": self.model, "temperature": 0, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Question: {question}\nReference answer: {reference}\n"
                                        f"Assistant's answer: {prediction}"}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.requests += 1
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read())
                return parse_verdict(reply["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as err:
                error = f"HTTP {err.code}"
                if err.code not in RETRY_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                error = f"request failed: {err}"
            except (ValueError, KeyError, IndexError, TypeError) as err:  # not a chat-completions reply
                return Verdict(None, f"malformed response: {err}")
        return Verdict(None, f"judge request failed after {attempt + 1} attempt(s): {error}")

    def verdict(self, question: str, reference: str, prediction: str) -> Verdict:
        key = self.key(question, reference, prediction)
        if key in self.cache:
            return self.cache[key]
        verdict = self._request(question, reference, prediction)
        if verdict.correct is not None:  # unjudged ones are asked again next time
            with self._lock:
                self.cache[key] = verdict
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "correct": verdict.correct, "reason": verdict.reason}) + "\n")
        return verdict

    def judge(self, rows: list[dict]) -> list[Verdict]:
        """Verdicts for prediction rows (``question``, ``reference``, ``prediction``), in order."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda r: self.verdict(r["question"], r["reference"], r["prediction"]), rows))


def judged_accuracy(rows: list[dict], verdicts: list[Verdict]) -> dict[str, dict[str, float]]:
    """Accuracy % among judged answers per domain and over all, with judged and unjudged counts."""
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for row, verdict in zip(rows, verdicts):
        groups[row.get("domain") or "unknown"].append(verdict)
        groups["all"].append(verdict)
    table = {}
    for group, items in groups.items():
        judged = [v.correct for v in items if v.correct is not None]
        table[group] = {"accuracy": 100.0 * sum(judged) / len(judged) if judged else float("nan"),
                        "judged": len(judged), "unjudged": len(items) - len(judged)}
    return table
