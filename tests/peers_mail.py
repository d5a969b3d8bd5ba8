"""A real SMTP server (aiosmtpd) on 127.0.0.1 with scripted replies: each DATA takes the next
scripted reply (e.g. "421 ...", "450 ...", "550 ..."), then "250 OK" once the script is used up.
`hold` delays the reply to the first DATA: the message has arrived, the client waits for 250."""

from __future__ import annotations

import email
import threading
import time
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from cropcron.embedded import free_port


@dataclass
class Received:
    at: float  # time.monotonic()
    reply: str
    message: Message

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    def subject(self) -> str:
        """The Subject as people read it: RFC 2047 words decoded, folding undone."""
        return str(make_header(decode_header(self.message["Subject"]))).replace("\r\n ", " ").replace("\n ", " ")

    def text(self) -> str:
        parts = [p.get_payload(decode=True).decode() for p in self.message.walk()
                 if p.get_content_type() == "text/plain"]
        return "\n".join(parts)

    def html(self) -> str:
        parts = [p.get_payload(decode=True).decode() for p in self.message.walk()
                 if p.get_content_type() == "text/html"]
        return "\n".join(parts)


@dataclass
class MailHandler:
    script: list[str] = field(default_factory=list)
    hold: float = 0.0
    received: list[Received] = field(default_factory=list)  # every DATA, whatever the reply
    entered: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        import asyncio

        reply = self.script.pop(0) if self.script else "250 OK"
        msg = email.message_from_bytes(envelope.content)
        self.received.append(Received(time.monotonic(), reply, msg))
        self.entered.set()
        if self.hold and len(self.received) == 1:
            await asyncio.sleep(self.hold)
        return reply

    def delivered(self) -> list[Received]:
        return [r for r in self.received if r.reply.startswith("250")]


class MailServer:
    def __init__(self, script: list[str] | None = None, hold: float = 0.0) -> None:
        self.handler = MailHandler(script=list(script or []), hold=hold)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def self_signed(directory: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (and its key), made with `cryptography`: (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = f"{directory}/smtp.crt", f"{directory}/smtp.key"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class Accounts:
    """aiosmtpd authenticator: LOGIN/PLAIN against a fixed user and password."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.attempts: list[bytes] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.attempts.append(auth_data.login)
        ok = auth_data.login == self.user and auth_data.password == self.password
        return AuthResult(success=ok, handled=False)


class TlsMailServer(MailServer):
    """STARTTLS required, then AUTH (LOGIN/PLAIN) required, with a self-signed certificate."""

    def __init__(self, cert: str, key: str, user: str, password: str, script: list[str] | None = None) -> None:
        import ssl

        self.handler = MailHandler(script=list(script or []))
        self.port = free_port()
        self.accounts = Accounts(user, password)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, auth_required=True, authenticator=self.accounts)
