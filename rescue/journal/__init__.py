"""What queue-rescue did to which message, kept so that no crash loses or doubles one.

`store` holds each message's state in SQLite (held, sending, accepted, deleted,
released) and the side file that makes a smarthost's 250 durable at once; `rows` is
its schema and the rows read back as values; `writer` writes behind the event loop;
`lock` keeps a second instance out and lets a flush wait its turn; `recovery` repairs
what a crashed run left open. Imports only values and `rescue.postfix` (recovery
deletes and releases through its commands).
"""
