"""Mails to the team: SMTP where configured, else `.eml` files in an outbox folder any mail client opens."""

from __future__ import annotations

import html
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# A card number (13-19 digits, spaces or dashes between groups) never leaves in a mail.
CARD_NUMBER = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
URL = re.compile(r"https://[^\s<>\"]+")


def scrub(text: str) -> str:
    return CARD_NUMBER.sub(lambda m: "…" + re.sub(r"\D", "", m.group())[-4:], text)


class MailError(Exception):
    """A mail that could not be built or sent; the message says why (it is the failed action's reason)."""


def build_message(sender: str, recipient: str, subject: str, body: str, message_key: str) -> EmailMessage:
    """Plain text plus HTML; the Message-ID comes from the ledger key, so a mail is traceable to its rule."""
    for name, value in (("From", sender), ("To", recipient), ("Subject", subject)):
        if "\r" in value or "\n" in value:  # would end the header and start another (Bcc: ...)
            raise MailError(f"cannot build the mail: its {name} header contains a line break")
    body, subject = scrub(body), scrub(subject)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, recipient, subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=re.sub(r"[^A-Za-z0-9._-]", ".", message_key), domain="giftflow")
    msg["X-Giftflow-Key"] = message_key
    msg.set_content(body)
    escaped = html.escape(body)
    linked = URL.sub(lambda m: f'<a href="{m.group()}">{m.group()}</a>', escaped)
    msg.add_alternative(f"<html><body><p>{linked.replace(chr(10), '<br>')}</p></body></html>", subtype="html")
    return msg


class Mailer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    """Sends team mails. GIFTFLOW_SMTP_HOST unset: writes them to `outbox_dir` as .eml files."""

    smtp_host: str | None = Field(default=None, description="GIFTFLOW_SMTP_HOST")
    smtp_port: int = Field(default=587, description="GIFTFLOW_SMTP_PORT")
    smtp_user: str | None = Field(default=None, description="GIFTFLOW_SMTP_USER")
    smtp_password: str | None = Field(default=None, description="GIFTFLOW_SMTP_PASSWORD")
    smtp_starttls: bool = Field(default=True, description="GIFTFLOW_SMTP_STARTTLS")
    smtp_allow_plaintext_login: bool = Field(default=False, description="GIFTFLOW_SMTP_ALLOW_PLAINTEXT_LOGIN")
    mail_from: str = Field(default="giftflow@localhost", description="GIFTFLOW_MAIL_FROM")
    outbox_dir: str | None = Field(
        default=None, description="where .eml files go without an SMTP host (Settings: $DAGSTER_HOME/outbox)"
    )
    timeout_s: float = 30.0

    def __repr__(self) -> str:  # never print the password
        return f"Mailer(smtp_host={self.smtp_host!r}, mail_from={self.mail_from!r})"

    @property
    def outbox(self) -> Path:
        return Path(self.outbox_dir or Path(".dagster_home") / "outbox")

    def send(self, recipient: str, subject: str, body: str, message_key: str) -> str:
        """Deliver one mail; returns where it went (the SMTP host or the .eml path). MailError: not built or not
        sent, with the reason."""
        try:
            msg = build_message(self.mail_from, recipient, subject, body, message_key)
        except (ValueError, TypeError) as exc:  # the email package refuses a header it cannot write safely
            raise MailError(f"cannot build the mail: {exc}") from None
        try:
            if not self.smtp_host:
                self.outbox.mkdir(parents=True, exist_ok=True)
                path = self.outbox / (re.sub(r"[^A-Za-z0-9._-]", "_", message_key) + ".eml")
                path.write_bytes(bytes(msg))
                return str(path)
            if self.smtp_user and not self.smtp_starttls and not self.smtp_allow_plaintext_login:
                # Without TLS the password crosses the network readable by anyone on the path.
                raise MailError(
                    "refusing to send the SMTP password without TLS: set GIFTFLOW_SMTP_STARTTLS=true, "
                    "or GIFTFLOW_SMTP_ALLOW_PLAINTEXT_LOGIN=true for a server on a trusted network"
                )
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_s) as smtp:
                if self.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.smtp_user:
                    smtp.login(self.smtp_user, self.smtp_password or "")
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            where = f"SMTP {self.smtp_host}:{self.smtp_port}" if self.smtp_host else f"outbox {self.outbox}"
            raise MailError(f"{where}: {type(exc).__name__}: {exc}") from None
        return f"smtp://{self.smtp_host}:{self.smtp_port}"
