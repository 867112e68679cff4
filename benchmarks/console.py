#!/usr/bin/env python
"""Console benchmark: the server time of every console page with one million generations in Postgres.

Creates a throw-away database, migrates it, and loads with `generate_series` (in the database, no round trips) N
generations over the last 60 days: the `generation` event of each (its payload holds the prompt and completion), an
`edited` event for the edited ones, the joined `generations` rows (versions base, v1, v2 in turn and a canary v3 in
the last three days; accepted, edited, rejected or shown; 500 users), 200k training rows, builds, snapshots, runs
with curves, three adapter versions with evaluations and alias history. Then it starts the server on loopback, signs
in, views the overview once (its first view builds the daily rollup: timed apart), and requests each page --repeat
times, reading the server's own time from the `Server-Timing` header that api/observe.py sets.

Run:  .venv/bin/python benchmarks/console.py            (--generations 1000000; loading takes a few minutes)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psycopg  # noqa: E402
import uvicorn  # noqa: E402

from core.db import get_engine, session_scope  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.projects import Role, create_key, create_project, get_project  # noqa: E402
from core.settings import Settings  # noqa: E402

ADMIN = os.environ.get("EDITLOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

LOAD = """
INSERT INTO feedback_events (id, project_id, event_id, type, generation_id, occurred_at, received_at, payload, excluded)
SELECT i, :p, 'e' || i || ':gen', 'generation', 'g' || i, now() - (:n - i) * interval '60 days' / :n,
       now() - (:n - i) * interval '60 days' / :n,
       json_build_object('prompt', '# task ' || i || E'\\ndef f_' || i || '(x):', 'completion',
                         E'\\n    total = 0\\n    for v in x:\\n        total += v * ' || (i % 7)
                         || E'\\n    return total\\n',
                         'model', 'm', 'language', 'python'),
       false
FROM generate_series(1, :n) AS i;

INSERT INTO feedback_events (id, project_id, event_id, type, generation_id, occurred_at, received_at, payload, excluded)
SELECT :n + i, :p, 'e' || i || ':edit', 'edited', 'g' || i,
       now() - (:n - i) * interval '60 days' / :n + interval '20 s',
       now() - (:n - i) * interval '60 days' / :n + interval '20 s',
       json_build_object('final_text', E'\\n    return sum(v * ' || (i % 7) || E' for v in x)\\n'), false
FROM generate_series(1, :n) AS i WHERE i % 20 IN (0, 1, 2);

INSERT INTO generations (project_id, generation_id, outcome, prompt_hash, model, language, file_path, "user",
    latency_ms, shown_at, shown_event_id, shown_event_pk, decision, decided_at, edited_at, edited_event_id,
    edited_event_pk, edit_distance, excluded, secrets_redacted, event_count, created_at, updated_at)
SELECT :p, 'g' || i, o.outcome, md5('p' || (i % 50000)),
       CASE WHEN i > :n - :n / 20 AND i % 2 = 0 THEN 'v3' WHEN i > :n * 2 / 3 THEN 'v2'
            WHEN i > :n / 3 THEN 'v1' ELSE 'base' END,
       'python', 'src/mod' || (i % 300) || '.py', 'u' || (i % 500), 20 + i % 80,
       t.shown, 'e' || i || ':gen', i,
       CASE WHEN o.outcome IN ('accepted', 'rejected') THEN o.outcome END,
       CASE WHEN o.outcome IN ('accepted', 'rejected') THEN t.shown + interval '5 s' END,
       CASE WHEN o.outcome = 'edited' THEN t.shown + interval '20 s' END,
       CASE WHEN o.outcome = 'edited' THEN 'e' || i || ':edit' END,
       CASE WHEN o.outcome = 'edited' THEN :n + i END,
       CASE WHEN o.outcome = 'edited' THEN (i % 97) / 100.0 END,
       false, '{}', CASE WHEN o.outcome = 'shown' THEN 1 ELSE 2 END, t.shown, t.shown + interval '20 s'
FROM generate_series(1, :n) AS i,
     LATERAL (SELECT now() - (:n - i) * interval '60 days' / :n AS shown) t,
     LATERAL (SELECT CASE WHEN i % 20 IN (0, 1, 2) THEN 'edited'
                          WHEN i % 20 < 10 + (CASE WHEN i > :n / 3 THEN 2 ELSE 0 END) THEN 'accepted'
                          WHEN i % 20 < 18 THEN 'rejected' ELSE 'shown' END AS outcome) o;

INSERT INTO training_rows (project_id, kind, source_key, prompt, prompt_hash, chosen, rejected, completion, label,
    "user", occurred_at, generation_ids, event_ids, content_hash, active, built_at)
SELECT :p, (ARRAY['edit_pair', 'kto', 'sft', 'choice_pair'])[1 + i % 4], 'g' || i || ':' || (i % 4),
       '# task ' || i, md5('p' || i), 'a', 'b', 'c', i % 2 = 0, 'u' || (i % 500), now(), '["g1"]', '["e1"]',
       md5('c' || i), i % 10 <> 0, now()
FROM generate_series(1, :rows) AS i;

SELECT setval(pg_get_serial_sequence('feedback_events', 'id'), (SELECT max(id) FROM feedback_events));
"""


def registry_rows(cur: psycopg.Cursor, project_id: int) -> None:
    """Builds, snapshots, runs (one with curves), three versions with evaluations and an alias history."""
    for b in range(1, 21):
        report = {"gates": {"trivial_edit": 40 + b, "total_rewrite": 12, "near_duplicate": 300 + b, "too_long": 3}}
        cur.execute(
            "INSERT INTO dataset_builds (project_id, started_at, finished_at, watermark, generations_read, rows_added,"
            " rows_changed, rows_removed, report) VALUES (%s, now(), now(), now(), 50000, 9000, 100, 20, %s)"
            " RETURNING id",
            (project_id, json.dumps(report)),
        )
        build_id = cur.fetchone()[0]
        counts = {k: {"train": 40000 + b, "eval": 10000} for k in ("edit_pair", "kto", "sft", "choice_pair")}
        cur.execute(
            "INSERT INTO dataset_snapshots (project_id, created_at, sha256, config, counts, row_count, build_id)"
            " VALUES (%s, now(), md5(%s::text) || md5(%s::text), '{}', %s, 200000, %s)",
            (project_id, b, b, json.dumps(counts), build_id),
        )
    curve = {"dpo": [{"step": s, "loss": 0.69 - s / 4000, "rewards/accuracies": min(1, s / 300)} for s in range(400)]}
    for r in range(1, 41):
        status = "running" if r == 40 else "succeeded"
        progress = {"stage": "dpo", "step": 250, "total": 400, "eta_s": 90} if r == 40 else {"stage": "done"}
        cur.execute(
            "INSERT INTO training_runs (project_id, kind, status, trigger, config, progress, metrics, created_at,"
            " started_at, finished_at, attempts, created_by, cancel_requested, version_ids) VALUES"
            " (%s, 'pipeline', %s, 'schedule', '{}', %s, %s, now(), now(), CASE WHEN %s THEN NULL ELSE now() END,"
            " 1, 'schedule', false, '[]') RETURNING id",
            (project_id, status, json.dumps(progress), json.dumps({"curve": curve}), status == "running"),
        )
    previous = None
    for number, distance in ((1, 0.4), (2, 0.3), (3, 0.32)):
        per_example = [{"key": f"k{i}", "distance": distance + 0.01 * (i % 7), "parses": 1.0} for i in range(64)]
        metrics = {
            "eval": {
                "edit_replay": {"mean": distance, "low": distance - 0.03, "high": distance + 0.03},
                "per_example": per_example,
            }
        }
        cur.execute(
            "INSERT INTO adapter_versions (project_id, number, name, kind, method, run_id, snapshot_id, parent_id,"
            " base_model, uri, manifest_sha256, manifest, metrics, created_at) VALUES (%s, %s, %s, 'policy', 'dpo',"
            " (SELECT min(id) FROM training_runs WHERE project_id = %s) + %s,"
            " (SELECT min(id) FROM dataset_snapshots WHERE project_id = %s) + %s, %s, 'base', '/nowhere', '', '{}',"
            " %s, now()) RETURNING id",
            (project_id, number, f"v{number}", project_id, number, project_id, number, previous, json.dumps(metrics)),
        )
        previous = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO alias_events (project_id, alias, action, version_id, actor, reason, forced, gate, created_at)"
            " VALUES (%s, %s, 'promote', %s, 'bench', 'benchmark', false, '{\"passed\": true, \"reasons\": []}',"
            " now() - interval '3 days')",
            (project_id, "canary" if number == 3 else "production", previous),
        )
        alias = "canary" if number == 3 else "production"
        cur.execute(
            "INSERT INTO adapter_aliases (project_id, alias, version_id, updated_at) VALUES (%s, %s, %s,"
            " now() - interval '3 days')"
            " ON CONFLICT (project_id, alias) DO UPDATE SET version_id = excluded.version_id",
            (project_id, alias, previous),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=1_000_000)
    parser.add_argument("--training-rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="Keep the database (its name is printed).")
    parser.add_argument("--database", help="Time the pages of a database kept by an earlier --keep run (no load).")
    args = parser.parse_args()

    name = args.database or f"editloop_bench_console_{uuid.uuid4().hex[:8]}"
    if args.database:
        args.keep = True
    else:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    results: dict = {"generations": args.generations, "machine": platform.node(), "cpus": os.cpu_count()}
    try:
        if args.database:
            with psycopg.connect(f"{base}/{name}") as conn:
                args.generations = results["generations"] = conn.execute("SELECT count(*) FROM generations").fetchone()[
                    0
                ]
            with session_scope(url) as session:
                _, admin_key = create_key(session, get_project(session, "bench"), Role.admin)
        else:
            upgrade(url)
            with session_scope(url) as session:
                project = create_project(session, "bench")
                _, admin_key = create_key(session, project, Role.admin)
                project_id = project.id
            started = time.perf_counter()
            with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
                sql = LOAD.replace(":n", str(args.generations)).replace(":rows", str(args.training_rows))
                sql = sql.replace(":p", str(project_id))
                for statement in filter(str.strip, sql.split(";\n")):
                    conn.execute(statement)
                with conn.cursor() as cur:
                    registry_rows(cur, project_id)
                conn.execute("VACUUM ANALYZE")
            results["load_s"] = round(time.perf_counter() - started, 1)
            print(f"loaded {args.generations:,} generations in {results['load_s']} s")
        settings = Settings(database_url=url, data_dir=Path(f"/tmp/{name}"))
        from api.app import create_app

        port = 8000 + os.getpid() % 1000
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        assert client.post("/ui/login", data={"key": admin_key}).status_code == 303
        client.cookies.set("editloop_console", client.cookies["editloop_console"], path="/ui")

        def server_ms(path: str) -> float:
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            return float(r.headers["server-timing"].split("dur=")[1])

        results["overview_first_view_ms"] = server_ms("/ui")  # builds the rollup from the whole table
        since = datetime.now(UTC).date().isoformat()
        pages = {
            "overview": "/ui",
            "feedback": "/ui/feedback",
            "feedback ?outcome=edited&model=v2": "/ui/feedback?outcome=edited&model=v2",
            "feedback ?user=u17": "/ui/feedback?user=u17",
            f"feedback ?since={since}": f"/ui/feedback?since={since}",
            "feedback, 2nd page": None,
            "generation (diff)": f"/ui/feedback/g{args.generations - 20}",
            "data": "/ui/data",
            "runs": "/ui/runs",
            "run (curves)": "/ui/runs/40",
            "run live JSON (polled)": "/ui/runs/40/live",
            "adapters": "/ui/adapters",
            "canary": "/ui/canary",
        }
        first = client.get("/ui/feedback").text
        cursor = first.split('href="/ui/feedback?cursor=')[1].split('"')[0].replace("&amp;", "&")
        pages["feedback, 2nd page"] = f"/ui/feedback?cursor={cursor}"
        table = {}
        for label, path in pages.items():
            server_ms(path)  # warm
            times = sorted(server_ms(path) for _ in range(args.repeat))
            table[label] = {"median_ms": statistics.median(times), "max_ms": times[-1]}
            print(f"{label:38s} median {statistics.median(times):7.1f} ms   max {times[-1]:7.1f} ms")
        print(f"{'overview, first view (builds rollup)':38s} {results['overview_first_view_ms']:7.1f} ms")
        results["pages"] = table
        server.should_exit = True
        thread.join(10)
        out = HERE / "results" / f"console-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    finally:
        get_engine(url).dispose()
        if args.keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
