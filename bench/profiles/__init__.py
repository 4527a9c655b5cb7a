"""Profiles at scale: a million synthetic members on SQLite and PostgreSQL (issue 8).

Run it with `python -m bench.profiles` (see `__main__.py` and BENCHMARKS.md). The modules:
`synthetic` fits the Online Retail shop's distributions and draws members from them,
`load` loads them into one store in a process of its own, `client` makes the gRPC calls
to the profiles service in another.
"""

from pathlib import Path


def _status(field: str, pid: int | str) -> float | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mib(pid: int | str = "self") -> float | None:
    """A process's resident memory now, in MiB (None once it is gone)."""
    return _status("VmRSS", pid)


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """A process's peak resident memory, in MiB: VmHWM, since getrusage's ru_maxrss carries
    the parent's peak over fork and exec."""
    return _status("VmHWM", pid)
