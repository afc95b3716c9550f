#!/usr/bin/env python3
"""A real SMTP server on loopback for the alerting tests (aiosmtpd).

It requires AUTH (PLAIN or LOGIN) with the one user and password it was
given, so a message only arrives when Alertmanager read the right password
file. Each accepted message is decoded and written to --dir as
NNNN.json: {"subject", "from", "to", "text", "html", "login"}; the file is
renamed into place, so a reader never sees half of one.
"""

import argparse
import email
import email.policy
import json
import os
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Sink:
    def __init__(self, out):
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        login = getattr(session, "auth_data", None)
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        parts = {"text/plain": "", "text/html": ""}
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype in parts and not part.is_multipart():
                parts[ctype] += part.get_content()
        record = {
            "subject": str(msg.get("Subject", "")),
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "text": parts["text/plain"],
            "html": parts["text/html"],
            "login": login.decode() if isinstance(login, bytes) else login,
        }
        with self.lock:
            self.count += 1
            n = self.count
        tmp = os.path.join(self.out, f".{n:04}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.out, f"{n:04}.json"))
        return "250 Message accepted"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login.decode() == args.user and auth_data.password.decode() == args.password
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    controller = Controller(
        Sink(args.dir),
        hostname="127.0.0.1",
        port=args.port,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=False,
        # aiosmtpd's LOGIN prompts ("User Name") differ from the usual
        # "Username:", which Go clients such as Alertmanager's expect.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
