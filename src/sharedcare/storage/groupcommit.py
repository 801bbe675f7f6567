"""Group commit: the small write of many concurrent requests in one transaction.

A read must leave its audit record durably written before it answers, so every read used to be
a write transaction of its own: a commit (a WAL flush on PostgreSQL, a lock and an fsync on
SQLite) per read, with the audit chain's head row locked until it. Under load the commits, not
the reads, set the pace. ``GroupCommit.run`` instead queues the work (a function writing on a
connection) and returns once a transaction holding it has committed: the first caller to find no
commit in progress becomes the leader, takes every work queued so far and runs them in one
transaction; those who queued meanwhile wait for it, and the next leader takes what queued during
that commit. One commit then serves as many reads as arrived during the previous one, the way
database servers group their own log flushes; an idle server still commits each read at once.

A work that fails makes the batch roll back; the batch's works are then run again one by one, each
in its own transaction, so that one failure (or a deadlock with another process) fails only its
own caller. Works must therefore be repeatable: they may run twice, the first run rolled back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine

from sharedcare.storage.engine import writer

Work = Callable[[Connection], None]

MAX_BATCH = 256
"""Works per transaction at most: a leader does not hold its followers' answers for ever."""


@dataclass(slots=True)
class _Queued:
    work: Work
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Run works of concurrent threads in shared transactions on one engine (see the module)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = writer(engine)
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()

    def run(self, work: Work) -> None:
        """Return once ``work`` committed; raise what it raised if it failed (nothing written)."""
        mine = _Queued(work)
        with self._queue_lock:
            self._queue.append(mine)
        while not mine.done:
            with self._leader:
                if mine.done:
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._commit(batch)
        if mine.error is not None:
            raise mine.error

    def _commit(self, batch: list[_Queued]) -> None:
        try:
            with self._engine.begin() as conn:
                for queued in batch:
                    queued.work(conn)
        except Exception as err:
            if len(batch) == 1:
                batch[0].error = err
            else:
                for queued in batch:
                    self._alone(queued)
        except BaseException as err:  # interrupted: nothing committed, nobody may think otherwise
            for queued in batch:
                queued.error = err
            raise
        finally:
            for queued in batch:
                queued.done = True

    def _alone(self, queued: _Queued) -> None:
        try:
            with self._engine.begin() as conn:
                queued.work(conn)
        except Exception as err:
            queued.error = err


_BY_ENGINE: WeakKeyDictionary[Engine, GroupCommit] = WeakKeyDictionary()
_BY_ENGINE_LOCK = threading.Lock()


def group_commit(engine: Engine) -> GroupCommit:
    """The one ``GroupCommit`` of ``engine`` (shared by every thread of the process)."""
    with _BY_ENGINE_LOCK:
        found = _BY_ENGINE.get(engine)
        if found is None:
            found = _BY_ENGINE[engine] = GroupCommit(engine)
        return found
