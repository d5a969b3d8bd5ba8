"""A real SMTP server (aiosmtpd) on 127.0.0.1 with scripted replies: each DATA takes the next
scripted reply (e.g. "421 ...", "450 ...", "550 ..."), then "250 OK" once the script is used up.
`hold` delays the reply to the first DATA: the message has arrived, the client waits for 250."""

from __future__ import annotations

import email
import threading
import time
from dataclasses import dataclass, field
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
    """A certificate for 127.0.0.1 (and its key), made with openssl: (cert path, key path)."""
    import subprocess

    cert, key = f"{directory}/smtp.crt", f"{directory}/smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


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
