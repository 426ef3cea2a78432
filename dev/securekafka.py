"""The secure local broker's certificates and its OIDC stand-in; ``up`` brings both up.

dev/localkafka.py (standard library only) declares the ``secure`` cluster's listeners and
writes its ``server.properties``; what needs ``cryptography`` is here, so this module runs in
the project's virtualenv::

    .venv/bin/python dev/securekafka.py up      # certificates, the OIDC stand-in, the broker
    python3 dev/localkafka.py down --cluster secure   # stops both, deletes the files

At the first ``up`` (the cluster's format time) :func:`make_pki` writes into
``<home>/secure/pki/``, nothing of it in the repo, secrets 0600:

- ``ca.pem``: a throwaway CA (its key is never written down: nothing more is signed later);
- ``broker.p12``: the broker's key and certificate for ``127.0.0.1`` and ``localhost``;
- ``wronghost.p12``: the same CA's certificate for ``broker.invalid`` only, for the
  listener that tests hostname verification;
- ``truststore.p12``: the CA, made with the JDK's ``keytool``, by which the mutual-TLS
  listener checks client certificates;
- ``client.pem``/``client.key``: the client certificate (``CN=relay``) for mutual TLS;
- ``store.password``, ``oauth.secret``, ``oidc.key``: the stores' password, the OAuth
  clients' secret and the stand-in's RS256 signing key (kept, so a restarted stand-in
  serves the JWKS the broker already has).

The OIDC stand-in (:class:`StandIn`, ``python dev/securekafka.py oidc``) is a real HTTP
server on ``127.0.0.1``: ``/.well-known/openid-configuration``, ``/jwks``, and ``/token``
(the OAuth 2.0 client-credentials grant, client authentication by HTTP Basic or form
fields). It signs real RS256 JWTs that the broker checks with Kafka's own
``OAuthBearerValidatorCallbackHandler``. Its clients (:data:`CLIENTS`) differ only in the
tokens they get: the audience the broker wants or another, lifetimes, an expired ``exp``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import localkafka
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SECURE = localkafka.CLUSTERS["secure"]
#: how long the certificates are valid: longer than any test run, short for a leaked file
_CERT_DAYS = 7
_OIDC_START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class OAuthClient:
    """What the stand-in puts in the tokens of one client id."""

    audience: str
    #: seconds from issue to ``exp``, as also told in ``expires_in``
    lifetime_s: int
    #: ``exp`` this far in the past, while ``expires_in`` still says the lifetime: the
    #: stand-in's clock is wrong, the broker sees an expired token
    expired_by_s: int = 0


#: the stand-in's client ids; each authenticates with the one secret in ``oauth.secret``
CLIENTS: dict[str, OAuthClient] = {
    "relay": OAuthClient(localkafka.OAUTH_AUDIENCE, 3600),
    "relay-20s": OAuthClient(localkafka.OAUTH_AUDIENCE, 20),
    "relay-wrong-audience": OAuthClient("another-service", 3600),
    "relay-expired": OAuthClient(localkafka.OAUTH_AUDIENCE, 3600, expired_by_s=300),
}


@dataclass(frozen=True)
class SecureKafka:
    """How a client reaches each listener of the secure broker, with its files and secrets."""

    ssl_bootstrap: str
    mtls_bootstrap: str
    sasl_ssl_bootstrap: str
    wrong_host_bootstrap: str
    cafile: Path
    client_certfile: Path
    client_keyfile: Path
    sasl_username: str
    sasl_password_file: Path
    token_endpoint: str
    oauth_secret_file: Path

    @property
    def sasl_password(self) -> str:
        """The SASL (PLAIN and SCRAM) user's password."""
        return self.sasl_password_file.read_text().strip()

    @property
    def oauth_secret(self) -> str:
        """The OAuth clients' secret at the token endpoint."""
        return self.oauth_secret_file.read_text().strip()


def describe(cluster: localkafka.Cluster = SECURE) -> SecureKafka:
    """The secure cluster's listeners and files (those exist once :func:`up` ran)."""
    tls = cluster.tls
    if tls is None:
        raise localkafka.KafkaHarnessError(f"{cluster.name} has no TLS listeners")
    pki = localkafka.pki_dir(cluster)
    return SecureKafka(
        ssl_bootstrap=f"127.0.0.1:{tls.ssl}",
        mtls_bootstrap=f"127.0.0.1:{tls.mtls}",
        sasl_ssl_bootstrap=f"127.0.0.1:{tls.sasl_ssl}",
        wrong_host_bootstrap=f"127.0.0.1:{tls.wrong_host}",
        cafile=pki / "ca.pem",
        client_certfile=pki / "client.pem",
        client_keyfile=pki / "client.key",
        sasl_username=localkafka.SCRAM_USER,
        sasl_password_file=localkafka.scram_password_file(cluster),
        token_endpoint=f"{localkafka.oidc_issuer(tls)}/token",
        oauth_secret_file=pki / "oauth.secret",
    )


# --- certificates ---------------------------------------------------------------------------


def _write_secret(path: Path, data: bytes) -> None:
    """Write a file born 0600 (never readable by others, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hoopai-relay local test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    names: Sequence[x509.GeneralName] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A certificate for ``key``: the CA's own when ``issuer`` is None, else signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(key if issuer is None else issuer[1], hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(folder: Path) -> None:
    """Write the CA, the broker's and client's certificates, the stores and the secrets.

    Written to a sibling directory and renamed at the end: a half-made ``pki`` never exists.
    """
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    store_password = secrets.token_urlsafe(18)
    _write_secret(partial / "store.password", store_password.encode() + b"\n")
    _write_secret(partial / "oauth.secret", secrets.token_urlsafe(24).encode() + b"\n")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("hoopai-relay local test CA", ca_key, None)
    (partial / "ca.pem").write_bytes(_pem(ca))
    loopback = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for file, subject, names in (
        ("broker.p12", "127.0.0.1", loopback),
        ("wronghost.p12", "broker.invalid", [x509.DNSName("broker.invalid")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            subject, key, (ca, ca_key), names=names, usage=ExtendedKeyUsageOID.SERVER_AUTH
        )
        store = pkcs12.serialize_key_and_certificates(
            b"broker",
            key,
            cert,
            [ca],
            serialization.BestAvailableEncryption(store_password.encode()),
        )
        _write_secret(partial / file, store)
    # keytool makes the truststore as a Java user would; -storepass:file keeps the password
    # off the command line (and out of ps).
    keytool = shutil.which("keytool") or "keytool"
    cmd = [
        keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(partial / "ca.pem"),
        "-keystore", str(partial / "truststore.p12"), "-storetype", "PKCS12",
        "-storepass:file", str(partial / "store.password"),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise localkafka.KafkaHarnessError(f"keytool could not make the truststore:\n{out.stderr}")

    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("relay", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (partial / "client.pem").write_bytes(_pem(client))
    _write_secret(
        partial / "client.key",
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_secret(
        partial / "oidc.key",
        signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    partial.rename(folder)


# --- the OIDC stand-in ------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class StandIn:
    """The identity provider's side: the JWKS and client-credentials tokens, RS256-signed."""

    def __init__(self, issuer: str, key: rsa.RSAPrivateKey, secret: str) -> None:
        self.issuer = issuer
        self.key = key
        self.secret = secret
        numbers = key.public_key().public_numbers()
        # The key id: a digest of the public key, so a restarted stand-in keeps it.
        self.kid = _b64url(_sha256(_uint(numbers.n).encode()))[:16]
        self.jwk = {
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": _uint(numbers.n), "e": _uint(numbers.e),
        }  # fmt: skip

    def discovery(self) -> dict[str, Any]:
        """The OpenID Provider metadata (``/.well-known/openid-configuration``)."""
        return {
            "issuer": self.issuer,
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "grant_types_supported": ["client_credentials"],
        }

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (RS256) of ``claims``."""
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def grant(self, client_id: str, secret: str, scope: str | None) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer (status, JSON) to a client-credentials request."""
        client = CLIENTS.get(client_id)
        if client is None or not secrets.compare_digest(secret, self.secret):
            return 401, {
                "error": "invalid_client",
                "error_description": "client authentication failed",
            }
        # A skewed client's token was issued so long ago that it expired expired_by_s ago.
        issued = int(time.time())
        if client.expired_by_s:
            issued -= client.lifetime_s + client.expired_by_s
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": client_id,
            "aud": client.audience,
            "iat": issued,
            "exp": issued + client.lifetime_s,
            "jti": secrets.token_hex(8),
            "client_id": client_id,
        }
        if scope:
            claims["scope"] = scope
        answer = {
            "access_token": self.sign(claims),
            "token_type": "Bearer",
            "expires_in": client.lifetime_s,
        }
        if scope:
            answer["scope"] = scope
        return 200, answer


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _client_credentials(headers: Any, form: dict[str, list[str]]) -> tuple[str, str]:
    """``(client_id, client_secret)`` from HTTP Basic (RFC 6749 2.3.1) or the form."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Basic "):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
            return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
        return "", ""
    return form.get("client_id", [""])[0], form.get("client_secret", [""])[0]


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """The three endpoints; anything else is a 404."""

        server_version = "oidc-stand-in"

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                self._json(200, stand_in.discovery())
            elif self.path == "/jwks":
                self._json(200, {"keys": [stand_in.jwk]})
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path != "/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(min(length, 65536)).decode("latin-1"))
            if form.get("grant_type") != ["client_credentials"]:
                self._json(400, {"error": "unsupported_grant_type"})
                return
            client_id, secret = _client_credentials(self.headers, form)
            status, body = stand_in.grant(client_id, secret, form.get("scope", [None])[0])
            self._json(status, body)

        def log_message(self, format: str, *args: Any) -> None:
            # One line per request, without the body: no secret or token in the log.
            sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    return Handler


def serve_oidc(pki: Path, port: int) -> None:
    """Run the stand-in on 127.0.0.1:``port`` until killed (``securekafka.py oidc``)."""
    key = serialization.load_pem_private_key((pki / "oidc.key").read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SystemExit(f"{pki / 'oidc.key'}: not an RSA key")
    issuer = f"http://127.0.0.1:{port}"
    stand_in = StandIn(issuer, key, (pki / "oauth.secret").read_text().strip())
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(stand_in))
    print(f"oidc stand-in: {issuer} (kid {stand_in.kid})", file=sys.stderr, flush=True)
    server.serve_forever()


def _oidc_answers(issuer: str) -> bool:
    """Whether our stand-in answers its discovery document at ``issuer``."""
    try:
        with urllib.request.urlopen(  # noqa: S310 -- a fixed http://127.0.0.1 URL of our own
            f"{issuer}/.well-known/openid-configuration", timeout=2
        ) as response:
            return bool(json.load(response).get("issuer") == issuer)
    except (OSError, ValueError):
        return False


def start_oidc(cluster: localkafka.Cluster = SECURE) -> bool:
    """Start the stand-in unless it already answers; return whether this call started it."""
    tls = cluster.tls
    assert tls is not None  # noqa: S101 -- only the secure cluster is passed here
    issuer = localkafka.oidc_issuer(tls)
    if _oidc_answers(issuer):
        return False
    pki = localkafka.pki_dir(cluster)
    log = localkafka.home() / cluster.name / "oidc.log"
    # The home on the command line: localkafka.oidc_pid() checks it before signalling.
    cmd = [sys.executable, __file__, "oidc", "--home", str(localkafka.home()), "--pki", str(pki),
           "--port", str(tls.oidc)]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    localkafka.keep_child(proc)
    localkafka.oidc_pid_file(cluster).write_text(str(proc.pid))
    deadline = time.monotonic() + _OIDC_START_TIMEOUT_S
    while not _oidc_answers(issuer):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise localkafka.KafkaHarnessError(
                f"the OIDC stand-in did not come up on {issuer}:\n{localkafka.tail(log, 20)}"
            )
        time.sleep(0.05)
    return True


def up(cluster: localkafka.Cluster = SECURE) -> bool:
    """Certificates (once per format), the stand-in, then the broker; whether anything started."""
    pki = localkafka.pki_dir(cluster)
    if not pki.exists():
        # New certificates mean a new broker: one still running would present the old ones.
        localkafka.down(cluster)
        make_pki(pki)
    started_oidc = start_oidc(cluster)
    return localkafka.up(cluster) or started_oidc


def token(kafka: SecureKafka, client_id: str, secret: str | None = None) -> tuple[int, Any]:
    """Ask the stand-in for a token, as a test's own client would: ``(status, JSON)``."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
    basic = base64.b64encode(f"{client_id}:{secret or kafka.oauth_secret}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 -- the stand-in's http://127.0.0.1 URL
        kafka.token_endpoint, data=form, headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 -- as above
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``securekafka.py {up,status,oidc}``; ``down`` is localkafka's."""
    parser = argparse.ArgumentParser(prog="securekafka", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "status", "oidc"])
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        match args.action:
            case "oidc":
                serve_oidc(args.pki, args.port)
            case "up":
                state = "started" if up() else "already up"
                kafka = describe()
                print(f"securekafka: {state}; SSL {kafka.ssl_bootstrap}, mutual TLS "
                      f"{kafka.mtls_bootstrap}, SASL_SSL {kafka.sasl_ssl_bootstrap}, "
                      f"CA {kafka.cafile}, token endpoint {kafka.token_endpoint}")  # fmt: skip
            case "status":
                return localkafka.main(["status", "--cluster", SECURE.name])
    except localkafka.KafkaHarnessError as exc:
        print(f"securekafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
