"""Settings of the Dask cluster that measures runs in parallel (the `[pipeline]` table of the
configuration file; the command line's --scheduler and --tls-* override them)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.errors import EngineValueError

__all__ = ["ClusterConfig"]

#: Hosts a plain (unencrypted) connection to the scheduler never leaves.
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the runs are measured and how the connection is secured (defaults in brackets).

    scheduler: address of an existing Dask scheduler, e.g. "tls://cluster.example.org:8786"
        [none: in this process, or on a local cluster with --workers].
    tls_ca_file, tls_cert, tls_key: files of Dask's TLS security (the certificate authority,
        this client's certificate and its private key), for a scheduler at a tls:// address
        [none].
    """

    scheduler: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        for name in ("scheduler", "tls_ca_file", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise EngineValueError(f"pipeline {name} must be a non-empty string, got "
                                       f"{value!r}")

    @property
    def uses_tls(self) -> bool:
        return any(v is not None for v in (self.tls_ca_file, self.tls_cert, self.tls_key))

    def security(self):
        """distributed.Security for the TLS files, or None when none is given."""
        if not self.uses_tls:
            return None
        from distributed.security import Security

        return Security(tls_ca_file=self.tls_ca_file, tls_client_cert=self.tls_cert,
                        tls_client_key=self.tls_key, require_encryption=True)

    def plain_remote_scheduler(self) -> bool:
        """The scheduler is on another machine and the connection would not be encrypted."""
        if self.scheduler is None:
            return False
        address = self.scheduler if "://" in self.scheduler else f"tcp://{self.scheduler}"
        parts = urlsplit(address)
        if parts.scheme in ("tls", "inproc"):
            return False
        host = parts.hostname or ""
        return not (host in _LOCAL_HOSTS or host.startswith("127."))
