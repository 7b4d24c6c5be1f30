"""Throwaway certificate authorities and a server certificate for 127.0.0.1 and localhost."""

from __future__ import annotations

import functools
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

# Names the server certificate is good for: what tests and Postfix connect to.
SERVER_NAMES = ("localhost", "127.0.0.1", "smarthost.test", "mx.provider.test")


@dataclass(frozen=True)
class LabCerts:
    """PEM files: a CA, a server certificate it signed, and an unrelated second CA."""

    folder: Path
    ca_file: Path  # trusts cert_file
    cert_file: Path  # server certificate followed by its chain
    key_file: Path
    other_ca_file: Path  # trusts nothing here: for "certificate not trusted" tests

    @classmethod
    def create(cls, folder: Path, names: tuple[str, ...] = SERVER_NAMES) -> LabCerts:
        """Make new keys and certificates in `folder` (readable by the postfix user);
        the server certificate is good for `names` only."""
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        ca = trustme.CA(organization_name="queue-rescue lab CA")
        server = ca.issue_cert(*names)
        certs = cls(
            folder=folder,
            ca_file=folder / "ca.pem",
            cert_file=folder / "server.pem",
            key_file=folder / "server.key",
            other_ca_file=folder / "other-ca.pem",
        )
        ca.cert_pem.write_to_path(str(certs.ca_file))
        for index, blob in enumerate(server.cert_chain_pems):
            blob.write_to_path(str(certs.cert_file), append=index > 0)
        server.private_key_pem.write_to_path(str(certs.key_file))
        trustme.CA(organization_name="unrelated CA").cert_pem.write_to_path(
            str(certs.other_ca_file)
        )
        return certs

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the server certificate; asks no client cert."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self, *, trusted: bool = True) -> ssl.SSLContext:
        """A client context trusting the lab CA, or (trusted=False) only the unrelated one."""
        return ssl.create_default_context(
            cafile=str(self.ca_file if trusted else self.other_ca_file)
        )


@functools.cache
def default_certs() -> LabCerts:
    """One set of certificates per process, in a folder removed when the process ends."""
    holder = tempfile.TemporaryDirectory(prefix="lab-certs-")
    # The object must live as long as the process; its finalizer removes the folder.
    _KEEP.append(holder)
    return LabCerts.create(Path(holder.name))


_KEEP: list[tempfile.TemporaryDirectory[str]] = []
