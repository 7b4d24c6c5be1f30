"""Talking to the smarthosts: one SMTP session and the pool that fails over between them.

`session` sets a session up with aiosmtplib and carries pipelined transactions
(`replies` reads their answers, `wire` makes the bytes they send); `pool` picks a
smarthost, retries with backoff, cools a failing one down and fails over. Imports only
values (`rescue.model`, `rescue.config`, `rescue.errors`, `rescue.aio`).
"""
