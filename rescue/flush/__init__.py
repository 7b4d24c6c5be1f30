"""The rescue flow: hold the selected messages, send them through a smarthost, settle.

`core` runs a flush over any `MailQueue` (`rescue.postfix.queue`: the live Postfix
queue, a spool copy, an export folder); `holding` is the hold step shared with export;
`prefetch` reads queue files ahead. Builds on `rescue.smarthost`, `rescue.journal`, `rescue.srs` and
`rescue.postfix`; the CLI and the service call it.
"""
