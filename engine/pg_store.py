"""The store on a PostgreSQL server, shared by many hosts (`sql_store` holds the SQL).

What one host's sqlite file gets from its single lock and from local pids, hosts sharing a
server get from row locks, advisory locks per task name and leases: each supervisor renews
its row's `lease_until` (server clock, so the hosts' clocks do not matter) at every check,
and any host's housekeeping archives a task whose lease ran out as LOST.
"""

from __future__ import annotations

from collections.abc import Callable

from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.pg_db import PgDatabase
from taskwatcher.engine.records import Ended, Ending, Launch
from taskwatcher.engine.settings import lease_from_env
from taskwatcher.engine.sql_reads import task_from_row
from taskwatcher.engine.sql_store import BATCH_ROWS, SqlStore

#: The server's clock, in unix seconds: leases are dated by it alone.
SERVER_NOW = "extract(epoch FROM clock_timestamp())"


class PgStore(SqlStore):
    """The PostgreSQL database at `url`, checked and upgraded at opening."""

    many_hosts = True
    _db: PgDatabase

    def __init__(self, url: str, clock: Callable[[], float], reservation_ttl: float) -> None:
        self.lease = lease_from_env()
        # A statement may take a third of the lease before its socket is given up.
        database = PgDatabase(url, clock, io_timeout=max(1.0, self.lease / 3))
        super().__init__(database, clock, reservation_ttl)

    def claim(self, taskid: int, launch: Launch) -> None:
        """The claim takes the lease: from now on a statement never outlasts it."""
        super().claim(taskid, launch)
        self._db.renewed(self.lease)

    def start(self, name: str, launch_of: Callable[[int], Launch], *, unique: bool = False) -> int:
        """Reserved and claimed at once, the claim taking the lease."""
        taskid = super().start(name, launch_of, unique=unique)
        self._db.renewed(self.lease)
        return taskid

    def relaunch(self, taskid: int, token_hash: str, timeout: float | None) -> str | None:
        """The next attempt's start renews the lease, as the claim took it."""
        requester = super().relaunch(taskid, token_hash, timeout)
        self._db.renewed(self.lease)
        return requester

    def kill_request(self, taskid: int, token_hash: str) -> str | None:
        """Who asked for the kill, if anyone; renews the lease in the same statement."""
        row = self._db.row(
            f"UPDATE tasks SET lease_until = {SERVER_NOW} + ? WHERE id = ? AND token_hash = ?"
            " RETURNING kill_request",
            (self.lease, taskid, token_hash),
        )
        if row is None:
            raise self._row_lost()
        self._db.renewed(self.lease)
        return row["kill_request"]

    def expire_leases(self) -> list[Ended]:
        """Archive as LOST the started tasks whose supervisor's lease ran out, on any host;
        rows another host is archiving meanwhile are skipped."""
        expired: list[Ended] = []
        while True:
            with self._db.transaction() as now:
                rows = self._db.rows(
                    f"SELECT *, {SERVER_NOW} - lease_until AS overdue FROM tasks"
                    f" WHERE status <> 'RESERVED' AND lease_until < {SERVER_NOW}"
                    f" ORDER BY id LIMIT ?{self._db.skip_locked}",
                    (BATCH_ROWS,),
                )
                for row in rows:
                    task = task_from_row(row)
                    ending = Ending(
                        Status.LOST,
                        termerror=f"lease expired {float(row['overdue']):.1f} s ago: its"
                        f" supervisor (pid {task.supervisor_pid} on host {task.host}) stopped"
                        " renewing it",
                    )
                    lost = self._archive(task, ending, now, killed_by=task.kill_request)
                    expired.append(lost)
                    # Its processes are on its host, for that host's housekeeping to stop.
                    self._db.execute("UPDATE history SET swept = false WHERE id = ?", (lost.id,))
            if len(rows) < BATCH_ROWS:
                return expired

    def _lease_renewal(self) -> tuple[str, tuple[float, ...]]:
        return f"{SERVER_NOW} + ?", (self.lease,)
