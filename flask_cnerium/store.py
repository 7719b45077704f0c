"""The idempotency store: its peewee model and the claim / complete / release / replay protocol.

Peewee owns the model, the table, the connections and the database URL; the few statements
on the request path run as constant SQL through ``database.execute_sql`` because building
peewee queries costs more than the queries themselves (``docs/performance.md``).
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import peewee
from playhouse import db_url
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from .config import KEY_COLUMN_LENGTH
from .errors import StoreError
from .forking import in_forked_children

log = logging.getLogger("flask_cnerium")

TABLE = "cnerium_idempotency"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
SCHEMA_LOCK = 0x636E6572  # "cner": the advisory lock that serializes CREATE TABLE
BUSY_TIMEOUT = 5.0
"""Seconds a statement waits for SQLite's write lock, or a pooled connection, before failing."""


class IdempotencyRecord(peewee.Model):
    """One idempotency key: its claim while the handler runs, then the stored response."""

    scope = peewee.CharField(max_length=KEY_COLUMN_LENGTH, default="")
    key = peewee.CharField(max_length=KEY_COLUMN_LENGTH, column_name="idempotency_key")
    operation = peewee.CharField(max_length=255)
    fingerprint = peewee.CharField(max_length=64)
    raw_fingerprint = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=16)
    status = peewee.IntegerField(null=True)
    headers = peewee.TextField(null=True)
    body = peewee.BlobField(null=True)
    node_id = peewee.CharField(max_length=255)
    owner = peewee.CharField(max_length=64)
    lease_expires_at = peewee.DoubleField(null=True)
    created_at = peewee.DoubleField()
    expires_at = peewee.DoubleField(index=True)

    class Meta:
        table_name = TABLE
        indexes = ((("scope", "key"), True),)


def bind_model(database: peewee.Database) -> type[IdempotencyRecord]:
    """A subclass of :class:`IdempotencyRecord` bound to ``database`` (one per store)."""

    class BoundRecord(IdempotencyRecord):
        class Meta:
            table_name = TABLE

    BoundRecord._meta.set_database(database)
    return BoundRecord


def open_database(url: str) -> peewee.Database:
    """A pooled peewee database for a ``sqlite:///path`` or ``postgresql://…`` URL."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise StoreError("The store needs a file: use sqlite:///path/to/cnerium.db.")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the store's directory: {exc}") from exc
        use_wal(path)
        return PooledSqliteDatabase(
            path, max_connections=64, stale_timeout=300, timeout=BUSY_TIMEOUT,
            check_same_thread=False,  # pooled: a connection serves one thread at a time
            pragmas={"journal_mode": "wal", "synchronous": "normal"})
    if scheme in ("postgres", "postgresql"):
        params = db_url.parse(url)
        return PooledPostgresqlDatabase(max_connections=32, stale_timeout=300,
                                        timeout=BUSY_TIMEOUT, **params)
    raise StoreError(f"Unsupported CNERIUM_DATABASE {url!r}: use sqlite:/// or postgresql://.")


def use_wal(path: str, timeout: float = BUSY_TIMEOUT) -> None:
    """Put the SQLite file at ``path`` in WAL mode, which the file then keeps.

    Processes that open a new file at the same moment (gunicorn workers) race for the switch,
    and SQLite answers the losers "database is locked" at once, without its busy timeout;
    once the file is in WAL mode, asking again takes no lock. So the switch is made here, and
    retried, before any connection of the pool asks for it.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with closing(sqlite3.connect(path, timeout=timeout)) as conn:
                conn.execute("PRAGMA journal_mode = wal")
            return
        except sqlite3.Error as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise StoreError(f"Cannot open the SQLite store {path}: {exc}") from exc
        time.sleep(0.01)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# The protocol's values are named tuples: built on every request, and a tuple is built
# three times faster than a frozen dataclass.

class StoredResponse(NamedTuple):
    """A response as stored: status, header pairs and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Record(NamedTuple):
    """A row of the store as the protocol sees it."""

    id: int
    operation: str
    fingerprint: str
    raw_fingerprint: str
    state: str
    owner: str
    lease_expires_at: float | None
    expires_at: float
    response: StoredResponse | None


class Claim(NamedTuple):
    """Ownership of a key while its handler runs; completing or releasing needs ``owner``.

    ``id`` is ``None`` for a claim not yet written (shared SQLite: the record is inserted
    once, completed, at the end of the transaction that holds the write lock).
    """

    id: int | None
    scope: str
    key: str
    owner: str
    operation: str
    fingerprint: str
    raw_fingerprint: str


class Fingerprint:
    """What identifies a request: a hash of its raw bytes, and a canonical hash made on demand."""

    __slots__ = ("_canonical", "_make_canonical", "raw")

    def __init__(self, raw: str, make_canonical: Callable[[], str]) -> None:
        self.raw = raw
        self._make_canonical = make_canonical
        self._canonical: str | None = None

    @property
    def canonical(self) -> str:
        """The hash of the canonical form (computed once, only when needed)."""
        if self._canonical is None:
            self._canonical = self._make_canonical()
        return self._canonical

    def matches(self, record: Record) -> bool:
        """Same request as the one that made ``record``: the cheap hash first."""
        return record.raw_fingerprint == self.raw or record.fingerprint == self.canonical


class Verdict(enum.Enum):
    """What the store decided for one request."""

    EXECUTED = "executed"
    REPLAYED = "replayed"
    MISMATCH = "idempotency-key-reused"
    IN_PROGRESS = "request-in-progress"


class Outcome(NamedTuple):
    """The verdict and the response to send (``None`` for conflicts)."""

    verdict: Verdict
    response: StoredResponse | None = None


def judge(record: Record | None, fingerprint: Fingerprint, now: float) -> Verdict | None:
    """Decide from an existing record; ``None`` means the key is free to claim."""
    if record is None:
        return None
    if record.state == COMPLETED:
        if record.expires_at <= now:
            return None
        return Verdict.REPLAYED if fingerprint.matches(record) else Verdict.MISMATCH
    # A claim lives as long as its lease (renewed while its handler runs), whatever the TTL.
    lease = record.lease_expires_at if record.lease_expires_at is not None else record.expires_at
    if lease <= now:
        return None
    return Verdict.IN_PROGRESS if fingerprint.matches(record) else Verdict.MISMATCH


class WriterLock:
    """Queues this process's writers, then other processes' (``flock``), before SQLite's lock.

    SQLite's own busy handler sleeps and retries, which gives a long tail under load; a lock
    of our own taken before ``BEGIN IMMEDIATE`` hands the write lock over in order.
    """

    def __init__(self, path: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = path
        self._fd: int | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; ``False`` when it stays held."""
        if not self._thread_lock.acquire(timeout=max(timeout, 0.0)):
            return False
        if self._path is None or self._take_flock(timeout):
            return True
        self._thread_lock.release()
        return False

    def _take_flock(self, timeout: float) -> bool:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = pause = None
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is None:  # another process holds it: only now start the clock
                    deadline, pause = time.monotonic() + timeout, 0.0005
                elif time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

    def release(self) -> None:
        """Let the next writer in."""
        if self._path is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


class NoWriterLock:
    """PostgreSQL needs no lock of ours: row locks and unique indexes order the writers."""

    def acquire(self, timeout: float) -> bool:
        """Always granted."""
        return True

    def release(self) -> None:
        """Nothing to release."""


class _ResponseCache:
    """Completed records of this process: immutable until they expire, so coherent anywhere."""

    def __init__(self, size: int = 10000) -> None:
        self._size = size
        self._records: dict[tuple[str, str], Record] = {}
        self._lock = threading.Lock()

    def get(self, scope: str, key: str, now: float) -> Record | None:
        record = self._records.get((scope, key))
        if record is not None and record.expires_at <= now:
            with self._lock:  # put() may be iterating to evict
                self._records.pop((scope, key), None)
            return None
        return record

    def put(self, scope: str, key: str, record: Record) -> None:
        with self._lock:
            if len(self._records) >= self._size:
                self._records.pop(next(iter(self._records)))
            self._records[(scope, key)] = record


class _LeaseKeeper:
    """Renews the leases of this process's running handlers so that none is taken over alive."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._claims: set[Claim] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def add(self, claim: Claim) -> None:
        with self._cond:
            self._claims.add(claim)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cnerium-leases",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, claim: Claim) -> None:
        with self._cond:
            self._claims.discard(claim)

    def stop(self) -> None:
        """End the renewing thread (the store is closing)."""
        with self._cond:
            self._stopped.set()
            self._cond.notify()

    def _run(self) -> None:
        interval = max(self._store.lock_timeout / 3, 0.05)
        while True:
            with self._cond:
                while not self._claims and not self._stopped.is_set():
                    self._cond.wait()
            if self._stopped.wait(interval):
                return
            with self._cond:
                claims = list(self._claims)
            for claim in claims:
                try:
                    if not self._store.renew(claim):
                        log.warning("Lost the lease on key %r: another worker took it over.",
                                    claim.key)
                except StoreError:
                    log.warning("Could not renew the lease on key %r.", claim.key,
                                exc_info=True)


_INHERITED: list[peewee.Database] = []
"""Databases a forked child inherited: kept referenced so their connections are never closed."""

_COLUMNS = ("id, operation, fingerprint, raw_fingerprint, state, owner, lease_expires_at, "
            "expires_at, status, headers, body")


class Store:
    """The claim / complete / release / replay protocol over one peewee database.

    ``shared=True`` means the database is the app's own: the claim, the handler's writes and
    the stored response then commit in one transaction, so they exist together or not at all.
    """

    def __init__(self, database: peewee.Database, *, shared: bool, node_id: str,
                 ttl: float, lock_timeout: float, in_flight_wait: float,
                 reopen: Callable[[], peewee.Database] | None = None) -> None:
        if isinstance(database, peewee.Proxy):  # DatabaseProxy, FlaskDB before init_app
            if database.obj is None:
                raise StoreError("The database proxy given to Cnerium is not initialized: "
                                 "call proxy.initialize(db) before cnerium.start().")
            database = database.obj
        self.database = database
        self.shared = shared
        self.node_id = node_id
        self.ttl = ttl
        self.lock_timeout = lock_timeout
        self.in_flight_wait = in_flight_wait
        self.is_sqlite = isinstance(database, peewee.SqliteDatabase)
        self._begin = {"lock_type": "IMMEDIATE"} if self.is_sqlite else {}
        self._reopen = reopen
        self._cache = _ResponseCache()
        self._sql = self._prepare_sql(database.param)
        self._make_process_state()
        in_forked_children(self._after_fork)
        # Behind the writer lock nobody else can insert: write the record once, completed.
        self._claims_deferred = shared and self.is_sqlite

    def _make_process_state(self) -> None:
        """The locks, lease keeper and model of this process (made again in a forked child)."""
        self.model = bind_model(self.database)
        self._lock = WriterLock(self._lock_path()) if self.is_sqlite else NoWriterLock()
        self._leases = _LeaseKeeper(self)
        self._running: dict[tuple[str, str], int] = {}
        self._running_lock = threading.Lock()

    def _after_fork(self) -> None:
        """In a child forked after start (gunicorn ``--preload``): nothing of the parent's.

        Locks may have been held by the parent's other threads, and pooled connections are
        the parent's sessions: the child opens its own and leaves those untouched (closing
        one here would end the parent's session too).
        """
        if self._reopen is not None:
            _INHERITED.append(self.database)
            self.database = self._reopen()
        self._cache = _ResponseCache()
        self._make_process_state()

    def _lock_path(self) -> str | None:
        path = self.database.database
        return None if not path or path == ":memory:" else path + ".cnerium-lock"

    @staticmethod
    def _prepare_sql(p: str) -> dict[str, str]:
        t = TABLE
        # expired, and not claimed by a handler whose lease still runs
        purgeable = f"expires_at <= {p} AND (state = '{COMPLETED}' OR lease_expires_at <= {p})"
        return {
            "select": f"SELECT {_COLUMNS} FROM {t} WHERE scope = {p} AND idempotency_key = {p}",
            "insert": f"INSERT INTO {t} (scope, idempotency_key, operation, fingerprint, "
                      f"raw_fingerprint, state, node_id, owner, lease_expires_at, created_at, "
                      f"expires_at) VALUES ({p}, {p}, {p}, {p}, {p}, '{IN_PROGRESS}', {p}, {p}, "
                      f"{p}, {p}, {p}) ON CONFLICT (scope, idempotency_key) DO NOTHING "
                      f"RETURNING id",
            "insert_completed": f"INSERT INTO {t} (scope, idempotency_key, operation, "
                                f"fingerprint, raw_fingerprint, state, node_id, owner, "
                                f"created_at, status, headers, body, expires_at) VALUES ({p}, "
                                f"{p}, {p}, {p}, {p}, '{COMPLETED}', {p}, {p}, {p}, {p}, {p}, "
                                f"{p}, {p})",
            "takeover": f"UPDATE {t} SET operation = {p}, fingerprint = {p}, "
                        f"raw_fingerprint = {p}, state = '{IN_PROGRESS}', node_id = {p}, "
                        f"owner = {p}, lease_expires_at = {p}, created_at = {p}, "
                        f"expires_at = {p}, status = NULL, headers = NULL, body = NULL "
                        f"WHERE id = {p} AND owner = {p}",
            "complete": f"UPDATE {t} SET state = '{COMPLETED}', status = {p}, headers = {p}, "
                        f"body = {p}, lease_expires_at = NULL, expires_at = {p} "
                        f"WHERE id = {p} AND owner = {p} AND state = '{IN_PROGRESS}'",
            "release": f"DELETE FROM {t} WHERE id = {p} AND owner = {p} "
                       f"AND state = '{IN_PROGRESS}'",
            "renew": f"UPDATE {t} SET lease_expires_at = {p} "
                     f"WHERE id = {p} AND owner = {p} AND state = '{IN_PROGRESS}'",
            "purge": f"DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE {purgeable} "
                     f"LIMIT {p})",
            "count_purgeable": f"SELECT COUNT(*) FROM {t} WHERE {purgeable}",
        }

    # -- setup ---------------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create the table and its indexes if they do not exist."""
        # connection(), even when shared: nothing left open in a process that may fork
        with self._guard(), self.connection(), self._transaction():
            if not self.is_sqlite:  # workers starting together race on the catalog
                self.database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.database.create_tables([self.model], safe=True)

    def close(self) -> None:
        """Stop renewing leases and close this store's pooled connections (a shared database
        is left to the app)."""
        self._leases.stop()
        if not self.shared and hasattr(self.database, "close_all"):
            self.database.close_all()

    # -- the protocol --------------------------------------------------------------------

    def execute(self, scope: str, key: str, operation: str, fingerprint: Fingerprint,
                handler: Callable[[], StoredResponse], on_commit: Callable[[], None]
                ) -> Outcome:
        """Run ``handler`` once for ``(scope, key)``, or answer from what is stored.

        ``on_commit`` runs once the stored response has committed (never on a replay, never
        when the handler raised). Raises :class:`StoreError` when the store cannot be used,
        before the handler runs.
        """
        cached = self._cache.get(scope, key, time.time())
        if cached is not None:  # completed and unexpired: answered without a connection
            if fingerprint.matches(cached):
                return Outcome(Verdict.REPLAYED, cached.response)
            return Outcome(Verdict.MISMATCH)
        if self.shared:  # the app's database: the app manages (or autoconnects) its connections
            return self._execute(scope, key, operation, fingerprint, handler, on_commit)
        with self.connection():
            return self._execute(scope, key, operation, fingerprint, handler, on_commit)

    def _execute(self, scope, key, operation, fingerprint, handler, on_commit) -> Outcome:
        # On a shared SQLite database the lock-free read is skipped: it is repeated inside
        # the write transaction anyway, and one fewer statement per first execution is
        # measurably faster there (``docs/performance.md``).
        if not self._claims_deferred:
            outcome = self._answer_from_store(scope, key, fingerprint)
            if outcome is not None and (outcome.verdict is not Verdict.IN_PROGRESS
                                        or not self.in_flight_wait):
                return outcome
        run = self._execute_shared if self.shared else self._execute_separate
        return run(scope, key, operation, fingerprint, handler, on_commit)

    def _answer_from_store(self, scope: str, key: str, fingerprint: Fingerprint
                           ) -> Outcome | None:
        """The lock-free read: a stored record answers most retries the cache missed."""
        with self._guard():
            record = self._select(scope, key)
        verdict = judge(record, fingerprint, time.time())
        if verdict is Verdict.REPLAYED:
            self._cache.put(scope, key, record)
        return None if verdict is None else Outcome(verdict, record.response)

    def _execute_separate(self, scope, key, operation, fingerprint, handler, on_commit):
        deadline = time.monotonic() + self.in_flight_wait
        while True:
            with self._guard(), self._write():
                record = self._select(scope, key)
                verdict = judge(record, fingerprint, time.time())
                claim = None if verdict else self._claim(scope, key, operation, fingerprint,
                                                         record)
            if claim is not None:
                return self._run_claimed(claim, handler, on_commit)
            if verdict is Verdict.IN_PROGRESS:
                record, verdict = self._wait_for_twin(scope, key, fingerprint, deadline)
            if verdict is not None:
                return self._decided(scope, key, verdict, record)
            # the twin gave the key up (it failed, or its lease lapsed): try to claim it

    def _wait_for_twin(self, scope: str, key: str, fingerprint: Fingerprint,
                       deadline: float) -> tuple[Record | None, Verdict | None]:
        """Re-read (without the writer lock) until the running twin is done or time is up."""
        pause, record, verdict = 0.01, None, Verdict.IN_PROGRESS
        while verdict is Verdict.IN_PROGRESS and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            with self._guard():
                record = self._select(scope, key)
            verdict = judge(record, fingerprint, time.time())
        return record, verdict

    def _run_claimed(self, claim: Claim, handler, on_commit) -> Outcome:
        self._leases.add(claim)
        try:
            response = handler()
        except BaseException:
            self._leases.discard(claim)
            self._release_quietly(claim)
            raise
        self._leases.discard(claim)
        try:
            with self._guard(), self._write():
                record = self._complete(claim, response)
        except StoreError:
            log.error("The response for key %r could not be stored; it is returned unstored "
                      "and its events are dropped.", claim.key, exc_info=True)
            return Outcome(Verdict.EXECUTED, response)
        if record is None:
            log.warning("Key %r was taken over while its handler ran; its response is "
                        "returned but not stored.", claim.key)
            return Outcome(Verdict.EXECUTED, response)
        self._cache.put(claim.scope, claim.key, record)
        on_commit()
        return Outcome(Verdict.EXECUTED, response)

    def _release_quietly(self, claim: Claim) -> None:
        try:
            with self._guard(), self._write():
                self.database.execute_sql(self._sql["release"], (claim.id, claim.owner))
        except StoreError:
            log.warning("Could not release key %r; it frees itself after the lock timeout.",
                        claim.key, exc_info=True)

    def _execute_shared(self, scope, key, operation, fingerprint, handler, on_commit):
        wait = self.in_flight_wait or BUSY_TIMEOUT
        _ = fingerprint.canonical  # hashed before the lock: the less work under it the better
        if not self.is_sqlite:  # row locks order PostgreSQL's writers: no lock of ours to wait on
            return self._execute_in_transaction(scope, key, operation, fingerprint, handler,
                                                on_commit, wait)
        # Count this process's requests per key, so a lock wait can tell a twin from load.
        # (Inline rather than a context manager: it runs on every first execution.)
        running, slot = self._running, (scope, key)
        with self._running_lock:
            running[slot] = running.get(slot, 0) + 1
        try:
            if not self._lock.acquire(wait):
                if running[slot] > 1:
                    return Outcome(Verdict.IN_PROGRESS)
                raise StoreError("The database stayed locked for %.1f s." % wait)
            try:
                return self._execute_in_transaction(scope, key, operation, fingerprint,
                                                    handler, on_commit, wait)
            finally:
                self._lock.release()
        finally:
            with self._running_lock:
                if running[slot] == 1:
                    del running[slot]
                else:
                    running[slot] -= 1

    def _execute_in_transaction(self, scope, key, operation, fingerprint, handler, on_commit,
                                wait):
        in_handler = False
        try:
            with self._transaction():
                claim = None
                while claim is None:
                    record = self._select(scope, key)
                    verdict = judge(record, fingerprint, time.time())
                    if verdict is not None:
                        return self._decided(scope, key, verdict, record)
                    claim = self._claim(scope, key, operation, fingerprint, record, wait)
                in_handler = True
                response = handler()
                in_handler = False
                record = self._complete(claim, response)
                if record is None:
                    raise StoreError("The claim on key %r vanished inside its transaction." % key)

                def committed() -> None:
                    self._cache.put(scope, key, record)
                    on_commit()

                self.database.after_commit(committed)
            return Outcome(Verdict.EXECUTED, response)
        except peewee.PeeweeException as exc:
            if in_handler:
                raise
            if _is_lock_timeout(exc):
                return Outcome(Verdict.IN_PROGRESS)
            raise StoreError(str(exc)) from exc

    def _decided(self, scope: str, key: str, verdict: Verdict, record: Record) -> Outcome:
        if verdict is Verdict.REPLAYED:
            self._cache.put(scope, key, record)
            return Outcome(verdict, record.response)
        return Outcome(verdict)

    def _claim(self, scope: str, key: str, operation: str, fingerprint: Fingerprint,
               record: Record | None, wait: float | None = None) -> Claim | None:
        """Insert a claim, or take over an expired record; ``None`` when another won."""
        now = time.time()
        owner = os.urandom(16).hex()
        values = (operation, fingerprint.canonical, fingerprint.raw)
        lease = now + self.lock_timeout
        bounded = wait is not None and not self.is_sqlite
        if record is None and self._claims_deferred:
            return Claim(None, scope, key, owner, *values)
        if bounded:  # a twin's uncommitted claim makes us wait; never longer than ``wait``
            self.database.execute_sql("SET LOCAL lock_timeout = %d" % int(wait * 1000))
        if record is not None:
            cursor = self.database.execute_sql(
                self._sql["takeover"], (*values, self.node_id, owner, lease, now,
                                        now + self.ttl, record.id, record.owner))
            row = (record.id,) if cursor.rowcount == 1 else None
        else:
            row = self.database.execute_sql(
                self._sql["insert"], (scope, key, *values, self.node_id, owner, lease, now,
                                      now + self.ttl)).fetchone()
        if bounded:
            self.database.execute_sql("SET LOCAL lock_timeout = DEFAULT")
        return Claim(row[0], scope, key, owner, *values) if row else None

    def _complete(self, claim: Claim, response: StoredResponse) -> Record | None:
        """Store the response if the claim is still ours; the completed record, else ``None``."""
        now = time.time()
        expires_at = now + self.ttl
        headers = json.dumps(response.headers)
        if claim.id is None:
            cursor = self.database.execute_sql(self._sql["insert_completed"], (
                claim.scope, claim.key, claim.operation, claim.fingerprint,
                claim.raw_fingerprint, self.node_id, claim.owner, now, response.status,
                headers, response.body, expires_at))
            return Record(cursor.lastrowid, claim.operation, claim.fingerprint,
                          claim.raw_fingerprint, COMPLETED, claim.owner, None, expires_at,
                          response)
        cursor = self.database.execute_sql(
            self._sql["complete"], (response.status, headers, response.body, expires_at,
                                    claim.id, claim.owner))
        if cursor.rowcount != 1:
            return None
        return Record(claim.id, claim.operation, claim.fingerprint, claim.raw_fingerprint,
                      COMPLETED, claim.owner, None, expires_at, response)

    def renew(self, claim: Claim) -> bool:
        """Extend a running handler's lease; ``False`` when the claim is no longer ours."""
        with self._guard(), self._connected(), self._write():
            cursor = self.database.execute_sql(
                self._sql["renew"], (time.time() + self.lock_timeout, claim.id, claim.owner))
        return cursor.rowcount == 1

    def _select(self, scope: str, key: str) -> Record | None:
        row = self.database.execute_sql(self._sql["select"], (scope, key)).fetchone()
        return None if row is None else _record(row)

    # -- maintenance ---------------------------------------------------------------------

    def purge(self, batch_size: int = 1000, pause: float = 0.005) -> Iterator[int]:
        """Delete expired records in batches; yields how many each batch removed.

        Each batch is its own short transaction, and the writer lock is let go between
        batches, so concurrent requests are never held up for long. On SQLite each batch's
        pages are checkpointed after the lock is let go: left to SQLite's automatic
        checkpoint, that copy and its ``fsync`` would run inside the batch's commit, with
        every writer waiting (``docs/performance.md``).
        """
        while True:
            now = time.time()
            with self._guard(), self._connected():
                with self._checkpoints_deferred(), self._write():
                    removed = self.database.execute_sql(self._sql["purge"],
                                                        (now, now, batch_size)).rowcount
                if self.is_sqlite:  # PASSIVE: never waits for, nor blocks, other writers
                    self.database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
            if removed:
                yield removed
            if removed < batch_size:
                return
            time.sleep(pause)

    @contextmanager
    def _checkpoints_deferred(self) -> Iterator[None]:
        """No automatic WAL checkpoint on this connection's commits while the block runs."""
        if not self.is_sqlite:
            yield
            return
        pages = self.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.database.execute_sql("PRAGMA wal_autocheckpoint = 0")
        try:
            yield
        finally:
            self.database.execute_sql("PRAGMA wal_autocheckpoint = %d" % pages)

    def count_purgeable(self) -> int:
        """How many records :meth:`purge` would remove now."""
        now = time.time()
        with self._guard(), self._connected():
            return self.database.execute_sql(self._sql["count_purgeable"], (now, now)).fetchone()[0]

    def get(self, scope: str, key: str) -> Record | None:
        """The stored record for ``(scope, key)``, expired or not."""
        with self._guard(), self._connected():
            return self._select(scope, key)

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[None]:
        """A connection for this thread, handed back (or closed) afterwards if it was opened
        here; one already open (e.g. by the app for this request) is left as it is."""
        with self._guard():
            opened = self.database.connect(reuse_if_open=True)
        try:
            yield
        finally:
            if opened and not self.database.in_transaction():
                self.database.close()

    @contextmanager
    def _connected(self) -> Iterator[None]:
        """:meth:`connection` for our own store; the app's shared database is left to the app
        on the request path (it manages, or autoconnects, its own connections)."""
        if self.shared:
            yield
            return
        with self.connection():
            yield

    def _transaction(self) -> peewee._callable_context_manager:
        """The write transaction: peewee's own, so a handler's ``atomic()`` nests inside it as
        a savepoint; a plain transaction rather than ``atomic()`` when none is open yet (one
        layer fewer on every first execution)."""
        if self.database.transaction_depth():
            return self.database.atomic()
        return self.database.transaction(**self._begin)

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A short write transaction behind the writer lock."""
        if not self._lock.acquire(BUSY_TIMEOUT):
            raise StoreError("The store stayed locked for %.1f s." % BUSY_TIMEOUT)
        try:
            with self._transaction():
                yield
        finally:
            self._lock.release()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn database failures into :class:`StoreError` (answered as 503)."""
        try:
            yield
        except (peewee.PeeweeException, ValueError) as exc:
            raise StoreError(str(exc) or type(exc).__name__) from exc


def _is_lock_timeout(exc: Exception) -> bool:
    """PostgreSQL's ``lock_not_available``: a twin held the key past our wait."""
    original = getattr(exc, "orig", None)  # peewee keeps the driver's exception here
    return getattr(original, "pgcode", None) == "55P03"


def _record(row: tuple) -> Record:
    (id_, operation, fingerprint, raw, state, owner, lease, expires_at, status, headers,
     body) = row
    response = None
    if state == COMPLETED:
        response = StoredResponse(status, [tuple(h) for h in json.loads(headers)], bytes(body))
    return Record(id_, operation, fingerprint, raw, state, owner, lease, expires_at, response)
