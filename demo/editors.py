"""Simulated editor users: they ask the gateway for code over HTTP and post what they did with it. A user rejects
code that does not parse, accepts code their taste leaves as it is, and edits the rest to taste."""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.progress import Progress

from demo.corpus import prompt_for, sample_function
from demo.tastes import Taste


@dataclass
class Reaction:
    outcome: str  # accepted | edited | rejected
    final: str | None
    distance: float | None  # normalized edit distance from what was shown to what the user kept


def react(code: str, taste: Taste) -> Reaction:
    """What a user with this taste does with generated code: rejects code that does not parse, accepts code the
    taste leaves as it is, and otherwise edits it to taste."""
    from feedback.syntax import parses
    from trainers.metrics import normalized_edit_distance

    if not parses(code):
        return Reaction("rejected", None, None)
    try:
        final = taste(code)
    except Exception as exc:  # the user's own taste function: say whose bug it is
        raise RuntimeError(f"the taste function raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(final, str):
        raise RuntimeError(f"the taste function returned {type(final).__name__}, not the edited code (str)")
    if final == code:
        return Reaction("accepted", None, 0.0)
    return Reaction("edited", final, normalized_edit_distance(code, final))


@dataclass
class Phase:
    """One round of editors using the model the gateway serves them."""

    round: int
    asked: str
    served: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    accepted: int = 0
    edited: int = 0
    rejected: int = 0
    distances: list[float] = field(default_factory=list)
    seconds: float = 0.0
    service: dict[str, Any] = field(default_factory=dict)  # GET /v1/adapters/{version}/metrics for the round

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.requests if self.requests else 0.0

    @property
    def mean_edit_distance(self) -> float | None:
        """Mean distance from what was shown to what the user kept (0 when accepted), rejected code left out."""
        return sum(self.distances) / len(self.distances) if self.distances else None

    def summary(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "asked": self.asked,
            "served": self.served,
            "requests": self.requests,
            "accepted": self.accepted,
            "edited": self.edited,
            "rejected": self.rejected,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_edit_distance": round(self.mean_edit_distance, 4) if self.mean_edit_distance is not None else None,
            "seconds": round(self.seconds, 1),
            "service_metrics": self.service,
        }


class Editors:
    """Simulated editor users: they ask the gateway for code and post what they did with it."""

    def __init__(
        self, base_url: str, key: str, taste: Taste, users: int, seed: int, max_tokens: int, names: int = 1
    ) -> None:
        self.base_url, self.key, self.taste, self.users = base_url, key, taste, users
        self.names = names  # user names per worker thread: more names spread a canary's per-user draw wider
        self.max_tokens = max_tokens
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def _prompt(self) -> str:
        with self.lock:
            return prompt_for(sample_function(self.rng))

    def one(self, client: httpx.Client, user: str, model: str, phase: Phase) -> None:
        prompt = self._prompt()
        r = client.post(
            "/v1/completions",
            json={
                "model": model,
                "prompt": prompt,
                "max_tokens": self.max_tokens,
                "temperature": 0,
                "user": user,
                "metadata": {"language": "python", "file_path": f"src/{user}/module.py"},
            },
        )
        if r.status_code != 200:
            raise RuntimeError(f"the gateway answered {r.status_code}: {r.text[:300]}")
        body = r.json()
        generation_id, code = body["id"], body["choices"][0]["text"]
        reaction = react(code, self.taste)
        now = datetime.now(UTC).isoformat()
        events: list[dict[str, Any]] = []
        if reaction.outcome == "rejected":
            events.append({"type": "rejected", "reason": "does not parse"})
        else:  # editors report the accept first, then the edit the user made to the accepted code
            events.append({"type": "accepted"})
            if reaction.outcome == "edited":
                events.append({"type": "edited", "final_text": reaction.final})
        for event in events:
            event.update(event_id=f"{generation_id}:{event['type']}", generation_id=generation_id, occurred_at=now)
        posted = client.post("/v1/events", json={"events": events})
        if posted.status_code != 200 or posted.json().get("rejected"):
            raise RuntimeError(f"the collector refused feedback: {posted.status_code} {posted.text[:300]}")
        with self.lock:
            phase.requests += 1
            phase.served[body["model"]] = phase.served.get(body["model"], 0) + 1
            setattr(phase, reaction.outcome, getattr(phase, reaction.outcome) + 1)
            if reaction.distance is not None:
                phase.distances.append(reaction.distance)

    def run(self, phase: Phase, requests: int, progress: Progress) -> None:
        task = progress.add_task(f"round {phase.round}: editors using {phase.asked}", total=requests)
        started = time.perf_counter()
        shares = [requests // self.users + (1 if u < requests % self.users else 0) for u in range(self.users)]

        def user_session(u: int) -> None:
            headers = {"Authorization": f"Bearer {self.key}"}
            with httpx.Client(base_url=self.base_url, headers=headers, timeout=120) as client:
                for i in range(shares[u]):
                    name = f"user-{u}" if self.names == 1 else f"user-{u}-{i % self.names}"
                    self.one(client, name, phase.asked, phase)
                    progress.advance(task)

        with ThreadPoolExecutor(self.users) as pool:
            for future in [pool.submit(user_session, u) for u in range(self.users)]:
                future.result()
        phase.seconds = time.perf_counter() - started
        progress.remove_task(task)
