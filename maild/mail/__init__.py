"""Pure mail functions: bytes → InboundMail → verdicts; templates → outgoing messages."""
