"""LLM-judged accuracy of open-ended answers (the paper's Table 3, which used GPT-4o).

Any OpenAI-compatible chat-completions endpoint can judge: the judge sees the question, the
reference answer and the prediction and replies ``{"correct": true|false, "reason": "..."}``.
Verdicts are cached on disk (JSON lines keyed by a hash of everything that decides a verdict: the
endpoint, the model, the system text, the user template and the three texts), so re-scoring never
asks twice and an edited prompt is asked afresh. Requests run with bounded concurrency and are
retried on rate limits, server errors, timeouts, dropped connections and truncated replies: after
the server's ``Retry-After`` when it sends one, else with exponential backoff. A reply that cannot
be read is counted as unjudged, never as correct; unjudged answers leave the denominator, so the
tool reports their share and fails above a threshold.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import string
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

log = logging.getLogger(__name__)

SYSTEM = ("You grade answers of an industrial visual-inspection assistant. Compare the assistant's answer "
          "with the reference answer to the same question about a product image. The answer is correct if "
          "it states the same facts as the reference (wording may differ); it is incorrect if it contradicts "
          "the reference, misses its key fact, or names a different defect, location or cause. Reply with "
          'JSON only: {"correct": true or false, "reason": "<one sentence>"}.')
USER_TEMPLATE = "Question: {question}\nReference answer: {reference}\nAssistant's answer: {prediction}"
TEMPLATE_FIELDS = {"question", "reference", "prediction"}
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Verdict:
    correct: bool | None  # None: unjudged (unreadable reply or failed request)
    reason: str


def parse_verdict(content: str) -> Verdict:
    """The judge's reply as a verdict: the last JSON object in it with a boolean ``correct`` (code
    fences, chatter and other braces around it are ignored); without one, unjudged."""
    decoder, found, start = json.JSONDecoder(), None, content.find("{")
    while start != -1:
        try:
            reply, _ = decoder.raw_decode(content, start)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("correct"), bool):
            found = reply
        start = content.find("{", start + 1)
    if found is None:
        return Verdict(None, f"unreadable judge reply: {content[:200]!r}")
    return Verdict(found["correct"], str(found.get("reason", "")))


def check_template(template: str) -> None:
    """A user template names exactly the fields {question}, {reference} and {prediction}."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != TEMPLATE_FIELDS:
        raise ValueError(f"the judge's user template must use the fields {sorted(TEMPLATE_FIELDS)} (each as "
                         f"{{name}}); it uses {sorted(fields)}")


def retry_after(error: urllib.error.HTTPError) -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), if it says."""
    value = error.headers.get("Retry-After") if error.headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Judge:
    """A chat-completions judge with an on-disk cache.

    Args:
        base_url: the endpoint's base URL (``…/v1``); requests go to ``{base_url}/chat/completions``.
        model: the judge model's name.
        cache: JSON-lines file of earlier verdicts (created if missing).
        api_key_env: environment variable holding the API key (sent as a Bearer token if set).
        concurrency: requests in flight at most.
        retries: further attempts after a failed request.
        backoff: seconds before the first retry; doubled each time (a ``Retry-After`` wins).
        timeout: seconds per request.
        system: the judge's system message.
        template: the user message, with the fields ``{question}``, ``{reference}``, ``{prediction}``.
        max_wait: the longest ``Retry-After`` honoured, in seconds (longer ones wait this long).
    """

    def __init__(self, base_url: str, model: str, cache: str | Path, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, retries: int = 4, backoff: float = 1.0, timeout: float = 60.0,
                 system: str = SYSTEM, template: str = USER_TEMPLATE, max_wait: float = 120.0) -> None:
        check_template(template)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.retries = model, concurrency, retries
        self.backoff, self.timeout, self.max_wait = backoff, timeout, max_wait
        self.system, self.template = system, template
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
        """The cache key: everything that decides the verdict (see the module docstring)."""
        text = json.dumps([self.url, self.model, self.system, self.template, question, reference, prediction])
        return hashlib.sha256(text.encode()).hexdigest()

    def _request(self, question: str, reference: str, prediction: str) -> Verdict:
        user = self.template.format(question=question, reference=reference, prediction=prediction)
        body = json.dumps({"model": self.model, "temperature": 0, "messages": [
            {"role": "system", "content": self.system}, {"role": "user", "content": user}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error, wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait)
            wait = self.backoff * 2 ** attempt  # before the next attempt, unless the server says otherwise
            with self._lock:
                self.requests += 1
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                error = f"HTTP {err.code}"
                if err.code not in RETRY_STATUS:
                    break
                asked = retry_after(err)
                wait = wait if asked is None else min(asked, self.max_wait)
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                # HTTPException covers a 200 whose body was cut short (IncompleteRead)
                error = f"request failed: {type(err).__name__}: {err}"
                continue
            try:
                reply = json.loads(raw)
            except ValueError:
                error = f"reply is not JSON ({len(raw)} bytes)"  # cut short without a length: ask again
                continue
            try:
                return parse_verdict(reply["choices"][0]["message"]["content"])
            except (KeyError, IndexError, TypeError) as err:  # JSON, but not a chat-completions reply
                return Verdict(None, f"malformed response: {type(err).__name__}: {err}")
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


MACRO = "mean of domains (macro)"
POOLED = "all answers (pooled)"


def judged_accuracy(rows: list[dict], verdicts: list[Verdict]) -> dict[str, dict[str, float]]:
    """Accuracy % among judged answers per domain, their macro mean (over the domains with judged
    answers) and the pooled accuracy over all answers, with judged and unjudged counts."""
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for row, verdict in zip(rows, verdicts):
        groups[row.get("domain") or "unknown"].append(verdict)
    groups = dict(sorted(groups.items()))
    groups[POOLED] = list(verdicts)
    table = {}
    for group, items in groups.items():
        judged = [v.correct for v in items if v.correct is not None]
        table[group] = {"accuracy": 100.0 * sum(judged) / len(judged) if judged else float("nan"),
                        "judged": len(judged), "unjudged": len(items) - len(judged)}
    domains = [row for group, row in table.items() if group != POOLED and row["judged"]]
    table[MACRO] = {"accuracy": sum(r["accuracy"] for r in domains) / len(domains) if domains else float("nan"),
                    "judged": sum(r["judged"] for r in domains), "unjudged": table[POOLED]["unjudged"]}
    return table
