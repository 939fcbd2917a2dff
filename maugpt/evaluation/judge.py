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

Nothing waits without bound (each attempt is one :func:`maugpt.evaluation.http.bounded_post`,
whose docstring says how it keeps its bounds and where it cannot):

- **Per request**, ``timeout`` is a total deadline for one attempt: connecting, sending, waiting and
  reading the whole reply, so a server trickling a byte every few seconds is cut off at it too.
- **Per run**, ``deadline`` (off by default: a run's length grows with the answers and the
  endpoint's rate limit, so no fixed bound fits) bounds :meth:`Judge.judge`: an attempt in flight
  is cut at it, a retry whose wait (``Retry-After`` or backoff) would end after it is not waited
  for, and answers not yet asked are not sent; all of those stay unjudged as ``overall deadline``.
- **Reply size**: a reply longer than ``max_reply_bytes`` (by its ``Content-Length``, or counted
  while reading when there is none; a body longer than its ``Content-Length`` is never read past
  it) is abandoned without reading it whole, and not retried (the same prompt would bring the same
  reply). Error statuses are judged by their status line; their bodies are never read.

Each unjudged verdict carries a short ``failure`` (``HTTP 503``, ``timeout``, ``reply too large``,
``not JSON``, ``unreadable verdict``, ``malformed reply``, ``truncated reply``, ``connection error``,
``overall deadline``); :func:`failure_counts` counts them for the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from time import monotonic  # bound apart from ``time``, which tests replace to record the waits

from maugpt.evaluation.http import OVERALL_DEADLINE, Failed, bounded_post

log = logging.getLogger(__name__)

SYSTEM = (
    "You grade answers of an industrial visual-inspection assistant. Compare the assistant's answer "
    "with the reference answer to the same question about a product image. The answer is correct if "
    "it states the same facts as the reference (wording may differ); it is incorrect if it contradicts "
    "the reference, misses its key fact, or names a different defect, location or cause. Reply with "
    'JSON only: {"correct": true or false, "reason": "<one sentence>"}.'
)
USER_TEMPLATE = "Question: {question}\nReference answer: {reference}\nAssistant's answer: {prediction}"
TEMPLATE_FIELDS = {"question", "reference", "prediction"}
MAX_REPLY_BYTES = 1 << 20  # a verdict's chat completion is about 1 KB; 1 MiB leaves room for chatty judges


@dataclass(frozen=True)
class Verdict:
    correct: bool | None  # None: unjudged (unreadable reply or failed request)
    reason: str
    failure: str | None = None  # why it stayed unjudged, in a word or two (the summary counts these)


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
        return Verdict(None, f"unreadable judge reply: {content[:200]!r}", "unreadable verdict")
    return Verdict(found["correct"], str(found.get("reason", "")))


def check_template(template: str) -> None:
    """A user template names exactly the fields {question}, {reference} and {prediction}."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != TEMPLATE_FIELDS:
        raise ValueError(
            f"the judge's user template must use the fields {sorted(TEMPLATE_FIELDS)} (each as "
            f"{{name}}); it uses {sorted(fields)}"
        )


def failure_counts(verdicts: list[Verdict]) -> dict[str, int]:
    """How many answers stayed unjudged for each reason, the most frequent first."""
    counts = Counter(v.failure or "unknown" for v in verdicts if v.correct is None)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


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
        timeout: seconds per attempt in all: connecting, waiting and reading the whole reply.
        system: the judge's system message.
        template: the user message, with the fields ``{question}``, ``{reference}``, ``{prediction}``.
        max_wait: the longest ``Retry-After`` honoured, in seconds (longer ones wait this long).
        deadline: seconds for a whole :meth:`judge` run; ``None`` or 0: no limit (the default, since
            a run's length grows with the number of answers and the endpoint's rate limit, so no
            fixed bound fits; each answer is bounded anyway by ``timeout``, ``retries`` and
            ``max_wait``, and a cut run resumes from the cache).
        max_reply_bytes: the longest reply read; a longer one is abandoned (unjudged, not retried).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        cache: str | Path,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 60.0,
        system: str = SYSTEM,
        template: str = USER_TEMPLATE,
        max_wait: float = 120.0,
        deadline: float | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        check_template(template)
        check_limits(base_url=base_url, timeout=timeout, deadline=deadline, max_reply_bytes=max_reply_bytes)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.retries = model, concurrency, retries
        self.backoff, self.timeout, self.max_wait = backoff, timeout, max_wait
        self.deadline, self.max_reply_bytes = deadline or None, max_reply_bytes
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

    def _body(self, question: str, reference: str, prediction: str) -> bytes:
        user = self.template.format(question=question, reference=reference, prediction=prediction)
        return json.dumps(
            {
                "model": self.model,
                "temperature": 0,
                "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": user}],
            }
        ).encode()

    def _post(self, body: bytes, until: float | None) -> bytes:
        """One attempt: the reply's body, or :class:`Failed`. ``until``: the run's deadline."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        with self._lock:
            self.requests += 1
        return bounded_post(self.url, body, headers, timeout=self.timeout, until=until, max_bytes=self.max_reply_bytes)

    def _wait(self, failed: Failed, attempt: int) -> float:
        """Seconds before ``attempt`` (1 for the first retry): the server's ``Retry-After`` up to
        ``max_wait``, else exponential backoff."""
        return self.backoff * 2 ** (attempt - 1) if failed.wait is None else min(failed.wait, self.max_wait)

    def _request(self, question: str, reference: str, prediction: str, until: float | None) -> Verdict:
        body = self._body(question, reference, prediction)
        last: Failed | None = None
        for attempt in range(self.retries + 1):
            wait = 0.0 if last is None else self._wait(last, attempt)
            if until is not None and monotonic() + wait >= until:  # nothing waits past the run's deadline
                return self._out_of_time(attempt, last, wait)
            if last is not None:
                time.sleep(wait)
            try:
                return self._read_verdict(self._post(body, until))
            except Failed as failed:
                last = failed
                if failed.failure == OVERALL_DEADLINE:
                    return Verdict(None, f"{self._overall()} passed during attempt {attempt + 1}", OVERALL_DEADLINE)
                if not failed.retry:
                    break
        return Verdict(None, f"judge request failed after {attempt + 1} attempt(s): {last.detail}", last.failure)

    @staticmethod
    def _read_verdict(raw: bytes) -> Verdict:
        try:
            reply = json.loads(raw)
        except ValueError:  # e.g. cut short without a length: ask again
            raise Failed("not JSON", f"reply is not JSON ({len(raw)} bytes)") from None
        try:
            return parse_verdict(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as err:  # JSON, but not a chat-completions reply
            return Verdict(None, f"malformed response: {type(err).__name__}: {err}", "malformed reply")

    def _overall(self) -> str:
        return f"overall deadline ({self.deadline:g} s)" if self.deadline else "overall deadline"

    def _out_of_time(self, attempts: int, last: Failed | None, wait: float) -> Verdict:
        if last is None:
            return Verdict(None, f"{self._overall()} passed before the request was sent", OVERALL_DEADLINE)
        return Verdict(
            None,
            f"{self._overall()} leaves no time for attempt {attempts + 1} (a {wait:g} s wait after {last.detail})",
            OVERALL_DEADLINE,
        )

    def verdict(self, question: str, reference: str, prediction: str, *, until: float | None = None) -> Verdict:
        """The cached verdict, else the judge's; ``until``: a ``time.monotonic()`` after which no
        request is sent and none waited for (see ``deadline``)."""
        key = self.key(question, reference, prediction)
        if key in self.cache:
            return self.cache[key]
        verdict = self._request(question, reference, prediction, until)
        if verdict.correct is not None:  # unjudged ones are asked again next time
            with self._lock:
                self.cache[key] = verdict
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "correct": verdict.correct, "reason": verdict.reason}) + "\n")
        return verdict

    def judge(self, rows: list[dict], progress: Callable[[str], None] | None = None) -> list[Verdict]:
        """Verdicts for prediction rows (``question``, ``reference``, ``prediction``), in order,
        within ``deadline`` seconds when one is set. ``progress(outcome)`` is called as each
        answer is done, with ``"cached"``, ``"judged"`` or ``"unjudged"`` (a progress bar's feed)."""
        until = monotonic() + self.deadline if self.deadline else None

        def one(row: dict) -> tuple[Verdict, str]:
            cached = self.key(row["question"], row["reference"], row["prediction"]) in self.cache
            verdict = self.verdict(row["question"], row["reference"], row["prediction"], until=until)
            return verdict, "cached" if cached else ("unjudged" if verdict.correct is None else "judged")

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(one, row) for row in rows]
            for future in as_completed(futures):
                if progress is not None:
                    progress(future.result()[1])
            return [future.result()[0] for future in futures]


def check_limits(*, base_url: str, timeout: float, deadline: float | None, max_reply_bytes: int) -> None:
    """The endpoint is an http(s) URL and the limits are positive (``deadline``: ``None`` or 0 for none)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the judge's base_url must be an http:// or https:// URL; got {base_url!r}")
    if not timeout > 0:
        raise ValueError(f"the judge's timeout is the seconds one request may take, more than 0; got {timeout}")
    if deadline is not None and not deadline >= 0:
        raise ValueError(f"the judge's deadline is the seconds a whole run may take, 0 for no limit; got {deadline}")
    if not (isinstance(max_reply_bytes, int) and max_reply_bytes > 0):
        raise ValueError(f"the judge's max_reply_bytes is a number of bytes, more than 0; got {max_reply_bytes!r}")


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
        table[group] = {
            "accuracy": 100.0 * sum(judged) / len(judged) if judged else float("nan"),
            "judged": len(judged),
            "unjudged": len(items) - len(judged),
        }
    domains = [row for group, row in table.items() if group != POOLED and row["judged"]]
    table[MACRO] = {
        "accuracy": sum(r["accuracy"] for r in domains) / len(domains) if domains else float("nan"),
        "judged": sum(r["judged"] for r in domains),
        "unjudged": table[POOLED]["unjudged"],
    }
    return table
