"""The outbox: a message is sent when its transaction commits, never when it rolls back."""

from kombu import Connection

from core.db import get_sessionmaker
from core.queue import configure, send_after_commit
from core.settings import Settings


def queued(broker: str, queue: str) -> int:
    with Connection(broker) as conn:
        return int(conn.SimpleQueue(queue).qsize())


def test_sent_only_after_commit(tmp_path, pg_url):
    settings = Settings(data_dir=tmp_path)
    configure(settings)
    broker = settings.celery_broker_url
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        send_after_commit(session, "feedback.build_rows", 1, queue="outbox-test")
        assert queued(broker, "outbox-test") == 0
        session.rollback()
    assert queued(broker, "outbox-test") == 0
    with sessions() as session:
        send_after_commit(session, "feedback.build_rows", 1, queue="outbox-test")
        session.commit()
    assert queued(broker, "outbox-test") == 1
