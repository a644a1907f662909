"""Proof that a process is a task's, for every process whose identity comes from the database.

Anyone who can write the database can forge a row, and a pid with its create time (both public
in /proc) proves only that a process is alive, not that it is the task's. The proof a database
writer cannot forge is the task's token: twrun puts a random token in its child's environment
(inherited by everything the task starts) and keeps only the token's SHA-256 in the row. Only
whoever starts a process chooses its environment, and `/proc/<pid>/environ` is readable only by
the process's owner and root. On top of the token, a process is acted on for a row only when
all its user ids are the uid twrun recorded and the caller is that user or root: a forger who
starts a set-uid program with the token in its environment gets mixed user ids, never a match.
"""

from __future__ import annotations

import os
import pwd
import signal
from enum import Enum

from taskwatcher.engine import wakeup
from taskwatcher.engine.childwatch import open_pidfd
from taskwatcher.grammar.datatype import datatype
from taskwatcher.grammar.digest import sha256_hex

#: The variable that carries the token into the task's environment.
TOKEN_VARIABLE = "TASKWATCHER_TOKEN"
_TOKEN_PREFIX = TOKEN_VARIABLE.encode() + b"="
#: Linux caps argv plus environment at a quarter of the stack limit; read no more than this.
_ENVIRON_LIMIT = 8 * 1024 * 1024


def new_token() -> str:
    """A fresh secret for one task: 128 random bits, as hex."""
    return os.urandom(16).hex()  # what secrets.token_hex(16) does, without its imports


def token_digest(token: str | bytes) -> str:
    """What the row keeps of a token: its SHA-256, from which the token cannot be recovered."""
    return sha256_hex(token.encode() if isinstance(token, str) else token)


@datatype(frozen=True)
class Owner:
    """Whose task a row says it is: the digest of its token and the uid of its supervisor."""

    digest: str
    uid: int

    @classmethod
    def of_row(cls, digest: object, uid: object) -> Owner | None:
        """The owner a row records, or None for a row without one (or an edited one)."""
        if not wakeup.valid(digest) or type(uid) is not int or uid < 0:
            return None
        return cls(digest, uid)

    def caller_may_act(self) -> bool:
        """Only the task's own user, or root, may stop its processes or read its files."""
        return os.geteuid() in (0, self.uid)

    def proves(self, pid: int) -> bool:
        """Whether the process holding pid now is one of this owner's task's processes.

        Its user ids must all be the recorded one, except for root acting on a task of
        root's: such a task may have dropped to another user (su, setpriv, a daemon), and
        whoever put the token in a process's environment started it.
        """
        uids = user_ids(pid)
        if uids is None:
            return False
        root_for_root = self.uid == 0 and os.geteuid() == 0
        return (root_for_root or uids == {self.uid}) and carries_token(pid, self.digest)

    def processes(self) -> list[int]:
        """Every process, the caller excepted, that proves to be the task's: one pass over /proc.

        Found this way are also those that left the task's process group and were re-parented
        to init; not found are those that cleared or rewrote their environment.
        """
        me = os.getpid()
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me and self.proves(int(name)):
                found.append(int(name))
        return found


@datatype(frozen=True)
class Census:
    """One look over /proc for housekeeping: which token digests are in whose environment,
    and, by user, whose environment the caller may not read (a program that made itself
    non-dumpable, as ssh-agent does, hides it from all but root)."""

    tokens: dict[str, set[int]]
    hidden: dict[int, list[int]]

    @classmethod
    def take(cls) -> Census:
        tokens: dict[str, set[int]] = {}
        hidden: dict[int, list[int]] = {}
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                digests = _token_digests(int(name))
            except PermissionError:
                uids = user_ids(int(name))
                if uids is not None and len(uids) == 1:
                    hidden.setdefault(min(uids), []).append(int(name))
                continue
            except OSError:  # gone meanwhile, or a kernel thread
                continue
            for digest in digests:
                tokens.setdefault(digest, set()).add(int(name))
        return cls(tokens, hidden)


def user_ids(pid: int) -> set[int] | None:
    """The distinct real, effective, saved and filesystem uids of a process; None once gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Uid:"):
                    return {int(field) for field in line.split()[1:]}
    except (OSError, ValueError):
        return None
    return None


def carries_token(pid: int, digest: str) -> bool:
    """Whether the environment of pid holds a token whose digest is `digest`.

    Unreadable (another user's process, a zombie, gone) means no proof. A plain comparison:
    the digest is no secret (the task's row holds it), only the token it is taken of.
    """
    try:
        return digest in _token_digests(pid)
    except OSError:
        return False


def carries_any_token(pid: int) -> bool:
    """Whether the environment of pid holds a task's token: a process of some twrun's task.
    Unreadable (another user's process, a zombie, gone) means no."""
    try:
        return bool(_token_digests(pid))
    except OSError:
        return False


def _token_digests(pid: int) -> list[str]:
    """The digests of the tokens in the environment of pid; OSError when it cannot be read."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        entries = environ.read(_ENVIRON_LIMIT).split(b"\0")
    return [
        token_digest(entry[len(_TOKEN_PREFIX) :])
        for entry in entries
        if entry.startswith(_TOKEN_PREFIX)
    ]


class Sent(Enum):
    """What became of one signal meant for a proven process."""

    DELIVERED = "delivered"
    GONE = "gone"  # exited, or its pid now belongs to a process that is not the task's
    DENIED = "denied"  # the kernel refused (another user's process, or a privileged one)


def signal_proven(owner: Owner, pid: int, sig: int) -> Sent:
    """Send sig to pid only if it proves to be the owner's task's, checked through a pidfd.

    The pidfd is opened before the proof is read, so the signal reaches the process that was
    proven, or nobody, even when the pid is recycled in between.
    """
    try:
        pidfd = open_pidfd(pid)
    except ProcessLookupError:
        return Sent.GONE
    try:
        if not owner.proves(pid):
            return Sent.GONE
        if pidfd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(pidfd, sig)
        return Sent.DELIVERED
    except ProcessLookupError:
        return Sent.GONE
    except PermissionError:
        return Sent.DENIED
    finally:
        if pidfd is not None:
            os.close(pidfd)


def user_name(uid: int | None = None) -> str:
    """A uid as a user reads it: the passwd name, or `uid N` where there is none (containers)."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
