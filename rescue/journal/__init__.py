"""What queue-rescue did to which message, kept so that no crash loses or doubles one.

`store` holds each message's state in SQLite (held, sending, accepted, deleted,
released); `writer` writes behind the event loop; `lock` keeps a second instance out;
`recovery` repairs what a crashed run left open. Imports only values and
`rescue.postfix`'s commands (recovery deletes and releases through them).
"""
