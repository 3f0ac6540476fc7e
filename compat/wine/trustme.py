"""Wine only: a stand-in for ``trustme``, serving certificates made beforehand
with the host's ``openssl``.

Written for this repository; not the trustme project's code.  The real
trustme needs ``cryptography``, whose native extension does not load in the
Windows CPython under Wine 8.0 ("DLL load failed while importing _rust"), and
anyio's test suite imports trustme at module level (its conftest).  So the CI
steps that run tests with the Windows interpreter under Wine
(``.ci/steps/compat-wine.sh``, ``.ci/steps/wine.sh``) put this directory on
the Windows ``sys.path`` (and nowhere else: Linux runs use the real trustme),
after making the files on the Linux side with::

    python3 compat/wine/trustme.py make DIR      # runs openssl on the host

and naming ``DIR`` in ``IOCP_WINE_TRUSTME_DIR``.

Only what the test suites use is implemented: ``CA()``, ``CA.issue_cert(*identities)``
for the identity sets in :data:`LEAVES`, ``CA.configure_trust(ctx)``,
``LeafCert.configure_cert(ctx)``.  Unlike trustme, every ``CA()`` is the same
CA (made once by ``make``), and a leaf can only be issued for an identity set
made beforehand; asking for another raises ``LookupError`` naming the ones
there are.  The certificates follow trustme's shape: an ECDSA P-256 CA with a
critical ``basicConstraints``/``keyUsage``, leaves with the identities as
subject alternative names (DNS, or IP for an address), server and client
authentication, and the key identifiers that Python 3.13's strict
verification (``VERIFY_X509_STRICT``) requires.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "IOCP_WINE_TRUSTME_DIR"

#: The identity sets a leaf is made for: anyio's suite issues ``localhost``,
#: ``xn--fa-hia.de`` and ``dummy-client``; ours (tests/test_tls.py)
#: ``localhost`` + ``127.0.0.1``.
LEAVES: tuple[tuple[str, ...], ...] = (
    ("localhost",),
    ("xn--fa-hia.de",),
    ("dummy-client",),
    ("localhost", "127.0.0.1"),
)

__all__ = ["CA", "LeafCert"]


def _stem(identities: tuple[str, ...]) -> str:
    """The file name (without extension) of the leaf for ``identities``."""
    return "leaf-" + "+".join(identities).replace(":", "_").replace("*", "star")


def _directory() -> Path:
    value = os.environ.get(ENV)
    if not value:
        raise RuntimeError(f"trustme stand-in (Wine only): {ENV} is not set; see {__file__}")
    return Path(value)


class LeafCert:
    """A certificate and its key for some identities, issued by :class:`CA`."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert = cert
        self._key = key

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` present this certificate (and its key)."""
        ctx.load_cert_chain(str(self._cert), str(self._key))


class CA:
    """The certificate authority ``make`` created (the same one on every call)."""

    def __init__(self) -> None:
        self._dir = _directory()

    def configure_trust(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` trust certificates this CA issued."""
        ctx.load_verify_locations(cafile=str(self._dir / "ca.pem"))

    def issue_cert(self, *identities: str) -> LeafCert:
        """The leaf certificate made for exactly these identities."""
        stem = _stem(identities)
        cert, key = self._dir / f"{stem}.pem", self._dir / f"{stem}.key"
        if not cert.exists():
            made = ", ".join(repr(leaf) for leaf in LEAVES)
            raise LookupError(f"trustme stand-in (Wine only): no certificate was made for {identities!r} "
                              f"(made: {made}); add it to LEAVES in {__file__}")
        return LeafCert(cert, key)


# --------------------------------------------------------------------------- host side


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def _san(identity: str) -> str:
    try:
        ipaddress.ip_address(identity)
    except ValueError:
        return f"DNS:{identity}"
    return f"IP:{identity}"


def make(directory: Path) -> None:
    """On the host: the CA and one leaf per :data:`LEAVES` entry, with ``openssl``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-days", "3", "-subj", "/O=trustme stand-in/CN=Wine test CA",
             "-keyout", "ca.key", "-out", "ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=directory)
    for identities in LEAVES:
        stem = _stem(identities)
        _openssl("req", *ec, "-subj", f"/O=trustme stand-in/CN={identities[0]}",
                 "-keyout", f"{stem}.key", "-out", f"{stem}.csr", cwd=directory)
        with tempfile.NamedTemporaryFile("w", suffix=".cnf", dir=directory, delete=False) as ext:
            ext.write("\n".join([
                "subjectAltName=" + ",".join(_san(identity) for identity in identities),
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth,clientAuth",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid,issuer",
            ]) + "\n")
        try:
            _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                     "-CAcreateserial", "-days", "3", "-extfile", ext.name, "-out", f"{stem}.pem", cwd=directory)
        finally:
            os.unlink(ext.name)
            (directory / f"{stem}.csr").unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "make":
        sys.exit(f"usage: {sys.argv[0]} make DIR   (on the Linux host; needs openssl)")
    make(Path(sys.argv[2]))
