"""Post feedback from a script: a generation (through the gateway, or one made elsewhere), the user's decision,
and what they kept, followed through the edits an editor would report.

    editloop keys create --project acme --role ingest          # prints the key
    python clients/python/examples/post_feedback.py --url http://127.0.0.1:8000 --key elk_...
    python clients/python/examples/post_feedback.py --url ... --key ... --generate   # ask the gateway first

Events are queued in ./editloop-queue.db before each call returns; run it with the server stopped, then again with
it up: the first run's events go out on the second."""

import argparse
import uuid

from editloop_client import EditloopClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an ingest key")
    parser.add_argument("--generate", action="store_true", help="generate through the gateway (needs a model)")
    args = parser.parse_args()

    document = "file:///work/calc.py"
    prefix = "def add(a, b):\n"
    with EditloopClient(args.url, args.key, queue_path="editloop-queue.db", settle_s=2.0) as client:
        if args.generate:
            generation = client.generate(prefix, max_tokens=32, stop=["\n\n"], temperature=0)
            gid, completion = generation.id, generation.text
        else:  # a completion from your own model: record it, with an id of your choosing
            gid, completion = f"script-{uuid.uuid4().hex[:12]}", "    return a+b"
            client.log_generation(gid, completion=completion, model="my-model", prompt=prefix, language="python")

        # The editor inserted the completion after the prefix and the user took it.
        client.track(gid).accepted(document=document, offset=len(prefix))
        # Then they typed: a comment above it (a shift), and spaces around the "+" (an edit of what they kept).
        client.text_changed(document, 0, 0, "# arithmetic\n")
        plus = len("# arithmetic\n") + len(prefix) + completion.index("+")
        client.text_changed(document, plus, 1, " + ")
        client.document_saved(document)  # settles now: posts `edited` with the region's final text

        other = f"script-{uuid.uuid4().hex[:12]}"
        client.log_generation(other, completion="print(x)", model="my-model", prompt="x = 1\n")
        client.track(other).rejected("wrong variable")
        client.track(other).rated(-1, comment="not what I asked")

    print(f"stored {client.stats.stored}, duplicates {client.stats.duplicates}, left on disk {len(client.queue)}")
    for r in client.rejected:
        print(f"refused: {r.event_id} {r.field}: {r.detail}")


if __name__ == "__main__":
    main()
