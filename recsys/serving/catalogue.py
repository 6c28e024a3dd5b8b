"""Durable catalogue changes: a log of item additions and removals, replayed onto a bundle's items.

The bundle is never written. Every change made through the service (``POST /v1/items``,
``DELETE /v1/items/{id}``) is first committed to a :class:`CatalogueStore`, then applied to the
in-memory :class:`~recsys.serving.service.Recommender`; at start the whole log is replayed, and
while the service runs it polls the log every ``poll_s`` seconds, so replicas that share a store
converge within that delay.

Stores (SQLAlchemy Core, one table ``setrec_catalogue_changes``):

- ``sqlite:///PATH`` (the default of ``recsys serve``: ``sqlite:///setrec-catalogue.db`` in the
  working directory): WAL journal, ``synchronous=FULL``, writers serialised by ``BEGIN IMMEDIATE``;
  safe for several processes on one host.
- ``postgresql://USER:PASSWORD@HOST/DB`` (psycopg 3): for replicas on several hosts. Writers take a
  ``SHARE ROW EXCLUSIVE`` table lock, so sequence numbers are committed in order and a poller that
  has read up to ``seq`` never misses an earlier one; readers are not blocked.
- ``sqlite://`` (in memory): the default of :func:`recsys.serving.app.create_app` for library use
  and tests; not durable.

One store holds several catalogues (``catalogue`` column); a service uses the dataset fingerprint
of its bundle, so bundles trained on the same dataset share their added items.

A removed item leaves the recommendations and candidate lists but is still accepted in histories
(its tokens stay in the model). Ids are added once: an id that was added (or is in the bundle) is
refused with 409 even after removal.

Example:
    >>> store = CatalogueStore("sqlite:///setrec-catalogue.db", catalogue="ab12cd34")
    >>> catalogue = Catalogue(recommender, store, poll_s=1.0)   # replays the log
    >>> catalogue.add("new-1", "A heist comedy set in 1920s Chicago", title="The Sting II")
    >>> catalogue.remove("new-1")
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal, Sequence

from recsys.errors import ConfigError, SetrecError, UnknownItemError

log = logging.getLogger("recsys.serving.catalogue")

TABLE = "setrec_catalogue_changes"
#: Texts embedded per forward pass when a log is replayed.
REPLAY_BATCH = 64


class CatalogueUnavailableError(SetrecError):
    """The catalogue store cannot be reached or written; the change was not made (retry later)."""


class DuplicateItemError(SetrecError):
    """An item id that is already in the catalogue (bundle items and added items alike)."""


@dataclass(frozen=True)
class Change:
    """One committed catalogue change.

    Attributes:
        seq: position in the store's log (increasing in commit order).
        op: ``add`` or ``remove``.
        item_id: source id.
        text / title: the item's text and display title (``add`` only).
    """

    seq: int
    op: Literal["add", "remove"]
    item_id: str
    text: str | None = None
    title: str | None = None


def database_url(url: str) -> str:
    """``url`` with the psycopg 3 driver for plain PostgreSQL URLs (``postgresql://``, ``postgres://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class CatalogueStore:
    """The log of catalogue changes in a SQL database (SQLite or PostgreSQL).

    Args:
        url: SQLAlchemy URL: ``sqlite:///path.db``, ``sqlite://`` (memory) or ``postgresql://...``.
        catalogue: which catalogue of the store (a service passes its bundle's dataset fingerprint).

    Raises:
        ConfigError: the URL is malformed, its driver is missing, or the database cannot be opened.

    Example:
        >>> store = CatalogueStore("sqlite:///catalogue.db", "ab12")
        >>> pending, change = store.commit("add", "x1", text="a film", title=None, after=0)
        >>> [c.item_id for c in store.changes(after=0)]          # ['x1']
    """

    def __init__(self, url: str, catalogue: str) -> None:
        import sqlalchemy as sa
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

        self.catalogue = str(catalogue)
        try:
            parsed = sa.make_url(database_url(url))
        except ArgumentError as error:
            raise ConfigError(f"--catalogue {url!r} is not a database URL (e.g. sqlite:///setrec-catalogue.db or postgresql://host/db)") from error
        self.url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"--catalogue {self.url}: only sqlite:// and postgresql:// stores are supported")
        kwargs: dict = {}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30.0, "check_same_thread": False}
            if parsed.database in (None, "", ":memory:"):
                from sqlalchemy.pool import StaticPool

                kwargs["poolclass"] = StaticPool  # one connection: a memory database is per connection
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine = sa.create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ImportError) as error:
            raise ConfigError(f"--catalogue {self.url}: the database driver is not installed ({error}); pip install 'psycopg[binary]'") from error
        if self.dialect == "sqlite":
            _sqlite_transactions(self.engine)
        metadata = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            metadata,
            sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
            sa.Column("catalogue", sa.String(128), nullable=False),
            sa.Column("op", sa.String(8), nullable=False),
            sa.Column("item_id", sa.String(256), nullable=False),
            sa.Column("text", sa.Text(), nullable=True),
            sa.Column("title", sa.Text(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.UniqueConstraint("catalogue", "item_id", "op", name=f"{TABLE}_once"),
            sqlite_autoincrement=True,  # seq never reused
        )
        self._sa = sa
        try:
            self._create(metadata)
        except SQLAlchemyError as error:
            raise ConfigError(f"--catalogue {self.url}: cannot open the catalogue store ({_one_line(error)})") from error

    def _create(self, metadata) -> None:
        from sqlalchemy.exc import IntegrityError, ProgrammingError

        for attempt in range(3):  # two processes creating the table at once: the loser sees it exist
            try:
                with self._write() as conn:
                    metadata.create_all(conn, checkfirst=True)
                return
            except (IntegrityError, ProgrammingError):
                if attempt == 2:
                    raise
                time.sleep(0.1)

    def _write(self):
        """A connection in a write transaction serialised across processes (see the module docstring)."""
        return _WriteTransaction(self)

    def changes(self, after: int = 0) -> list[Change]:
        """Committed changes with ``seq > after``, in order.

        Raises:
            CatalogueUnavailableError: the database cannot be read.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.connect() as conn:
                return self._changes(conn, after)
        except SQLAlchemyError as error:
            raise CatalogueUnavailableError(f"the catalogue store {self.url} cannot be read ({_one_line(error)[:200]}); retry shortly") from error

    def _changes(self, conn, after: int) -> list[Change]:
        t = self.table
        rows = conn.execute(
            self._sa.select(t.c.seq, t.c.op, t.c.item_id, t.c.text, t.c.title)
            .where(t.c.catalogue == self.catalogue, t.c.seq > after)
            .order_by(t.c.seq)
        )
        return [Change(int(r.seq), r.op, r.item_id, r.text, r.title) for r in rows]

    def commit(self, op: Literal["add", "remove"], item_id: str, *, text: str | None = None, title: str | None = None, after: int = 0) -> tuple[list[Change], Change | None]:
        """Commit one change; returns the changes after ``after`` committed before it, and it.

        In one write transaction: read what others committed since ``after`` (the caller applies
        those first, so every process applies the log in the same order), refuse a second ``add``
        of an id, skip a second ``remove`` (returns None for the change), insert, commit.

        Raises:
            DuplicateItemError: ``add`` of an id that this catalogue already added.
            CatalogueUnavailableError: the database cannot be written; nothing was committed.
        """
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError

        t = self.table
        try:
            with self._write() as conn:
                pending = self._changes(conn, after)
                done = conn.execute(
                    self._sa.select(t.c.seq).where(t.c.catalogue == self.catalogue, t.c.item_id == item_id, t.c.op == op)
                ).first()
                if done is not None:
                    if op == "add":
                        raise DuplicateItemError(f"id: item {item_id!r} is already in the catalogue")
                    return pending, None
                seq = conn.execute(
                    t.insert().values(catalogue=self.catalogue, op=op, item_id=item_id, text=text, title=title, created_at=time.time())
                ).inserted_primary_key[0]
        except IntegrityError as error:  # the unique constraint: a concurrent add of the same id won
            raise DuplicateItemError(f"id: item {item_id!r} is already in the catalogue") from error
        except SQLAlchemyError as error:
            raise CatalogueUnavailableError(f"the catalogue store {self.url} cannot be written ({_one_line(error)[:200]}); nothing was changed, retry shortly") from error
        return pending, Change(int(seq), op, item_id, text, title)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


class _WriteTransaction:
    """``with store._write() as conn``: BEGIN IMMEDIATE on SQLite, a table lock on PostgreSQL, commit on exit."""

    def __init__(self, store: CatalogueStore) -> None:
        self.store = store

    def __enter__(self):
        self.conn = self.store.engine.connect()
        if self.store.dialect == "sqlite":
            self.conn.execution_options(setrec_sqlite_begin="BEGIN IMMEDIATE")
        self.transaction = self.conn.begin()
        if self.store.dialect == "postgresql" and self.store._sa.inspect(self.conn).has_table(TABLE):
            self.conn.exec_driver_sql(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
        return self.conn

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.transaction.commit()
            else:
                self.transaction.rollback()
        finally:
            self.conn.close()


def _sqlite_transactions(engine) -> None:
    """pysqlite: SQLAlchemy emits BEGIN itself (IMMEDIATE for writers), WAL journal, full fsync on commit."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling is off
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql(conn.get_execution_options().get("setrec_sqlite_begin", "BEGIN"))


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return " ".join(text.split())


class Catalogue:
    """A recommender's catalogue kept in step with a :class:`CatalogueStore`.

    Args:
        recommender: the :class:`~recsys.serving.service.Recommender` to apply changes to.
        store: the log; every change is committed there before it is applied.
        poll_s: how often :meth:`start` polls the store for other replicas' changes (seconds;
            the bound on how long a replica lags behind another). 0 disables polling.

    Creating it replays the store's log onto the recommender (items added from their text,
    removals applied).

    Raises:
        CatalogueUnavailableError: the store cannot be read at start.
        TextEncoderUnavailableError: the log has added items but the bundle's text encoder cannot be loaded.
    """

    def __init__(self, recommender, store: CatalogueStore, poll_s: float = 1.0) -> None:
        if poll_s < 0:
            raise ConfigError(f"--catalogue-poll-s must be >= 0, got {poll_s}")
        self.recommender = recommender
        self.store = store
        self.poll_s = float(poll_s)
        self.applied_seq = 0
        self._write_lock = threading.Lock()  # one writer (or poller) of this process at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_sync_error: str | None = None
        self.sync()

    # ------------------------------------------------------------------ changes
    def add(self, item_id: str, text: str, title: str | None = None) -> dict:
        """Add an item from its text: committed to the store, then retrievable here; returns its entry.

        The text is embedded before any lock is taken; readers are held only while the item is
        appended to the model and the index.

        Raises:
            DuplicateItemError: the id is in the bundle or was added before (here or by a replica).
            TextEncoderUnavailableError: the bundle's text encoder cannot be loaded.
            CatalogueUnavailableError: the store cannot be written; nothing changed.
        """
        rec = self.recommender
        if rec.has(item_id):
            raise DuplicateItemError(f"id: item {item_id!r} is already in the catalogue")
        vector = rec.embed_texts([text])
        with self._write_lock:
            pending, change = self.store.commit("add", item_id, text=text, title=title, after=self.applied_seq)
            self._apply(pending)
            rec.insert_items([item_id], vector, [title], added=True)
            self.applied_seq = change.seq
        return rec.item(item_id)

    def remove(self, item_id: str) -> dict:
        """Take an item out of the recommendations (it stays valid in histories); returns its entry.

        Removing an item twice is not an error (the second does nothing).

        Raises:
            UnknownItemError: no such id (after catching up with the store).
            CatalogueUnavailableError: the store cannot be written; nothing changed.
        """
        with self._write_lock:
            if not self.recommender.has(item_id):
                self._apply(self.store.changes(self.applied_seq))
            if not self.recommender.has(item_id):
                raise UnknownItemError(f"item {item_id!r} is not in the catalogue; nothing to remove")
            pending, change = self.store.commit("remove", item_id, after=self.applied_seq)
            self._apply(pending)
            if change is not None:
                self.recommender.set_available(item_id, False)
                self.applied_seq = change.seq
        return self.recommender.item(item_id)

    def sync(self) -> int:
        """Apply the changes committed since the last sync (other replicas'); returns how many."""
        with self._write_lock:
            changes = self.store.changes(self.applied_seq)
            self._apply(changes)
            return len(changes)

    def _apply(self, changes: Sequence[Change]) -> None:
        """Apply committed changes in log order (adds embedded in batches). Caller holds the write lock."""
        rec = self.recommender
        batch: list[Change] = []

        def flush() -> None:
            fresh = [c for c in batch if not rec.has(c.item_id)]
            if fresh:
                vectors = rec.embed_texts([c.text or "" for c in fresh])
                rec.insert_items([c.item_id for c in fresh], vectors, [c.title for c in fresh], added=True)
            batch.clear()

        for change in changes:
            if change.op == "add":
                batch.append(change)
                if len(batch) >= REPLAY_BATCH:
                    flush()
            else:
                flush()
                if rec.has(change.item_id):
                    rec.set_available(change.item_id, False)
                else:
                    log.warning("catalogue: removal of %r, which this bundle does not know; ignored", change.item_id)
            self.applied_seq = max(self.applied_seq, change.seq)
        flush()

    # ------------------------------------------------------------------ polling
    def start(self) -> None:
        """Poll the store every ``poll_s`` seconds in a daemon thread (no-op when ``poll_s`` is 0)."""
        if self.poll_s <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="setrec-catalogue-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
                self.last_sync_error = None
            except SetrecError as error:  # the store is down, or an item cannot be embedded: retry next time
                if self.last_sync_error != str(error):
                    log.warning("catalogue sync failed: %s", error)
                self.last_sync_error = str(error)

    def stop(self) -> None:
        """Stop polling (waits for a sync in progress)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)

    def close(self) -> None:
        """Stop polling and release the store."""
        self.stop()
        self.store.close()


__all__ = ["Catalogue", "CatalogueStore", "CatalogueUnavailableError", "Change", "DuplicateItemError", "database_url"]
