"""The daemon's own log lines, one format: logfmt (``key=value`` pairs, one line per record).

``time=2026-12-07T16:40:22.123Z level=info logger=ztdns.daemon msg="reloaded /etc/ztdns/ztdns.toml"``, then the
record's structured fields (``logging``'s ``extra=``), e.g. ``event=dnssec_bogus qname=… qtype=A ede=6``, then
``exc="…"`` with an exception's traceback. Values with spaces, quotes, ``=`` or control characters are quoted,
with ``\\``, ``"`` and newlines escaped, so every record is one line a log shipper (Loki, Vector, Splunk) reads as
fields. The start-up summary (``ztdns: serving config …``, ``ztdns: listening on …``) stays plain text: it is
for the person who started the server (docs/configuration.md, ``[log]``).
Client data: none of its own; what the records carry is decided where they are made (only observe/ may log
client data).
"""

from __future__ import annotations

import logging
import time

# The attributes every LogRecord has: anything else on a record came from ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:/_-+@,[]()*#%&!?'<>|~^$;")


def value_text(value: object) -> str:
    """A logfmt value: as it is when it needs no quotes, else quoted and escaped (one line, always)."""
    text = str(value)
    if text and all(char in _PLAIN for char in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: list[tuple[str, object]] = [
            ("time", f"{stamp}.{int(record.msecs):03d}Z"),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        fields += [(key, value) for key, value in vars(record).items() if key not in _STANDARD]
        if record.exc_info:
            fields.append(("exc", self.formatException(record.exc_info)))
        if record.stack_info:
            fields.append(("stack", record.stack_info))
        return " ".join(f"{key}={value_text(value)}" for key, value in fields)


def configure(level: str) -> None:
    """Log the process's records to stderr in logfmt at ``level`` ("debug", "info", ...)."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
