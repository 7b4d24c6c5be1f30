"""The rescue flow: hold the selected messages, send them through a smarthost, settle.

`core` runs a flush over any `MailQueue` (`rescue.postfix.queue`: the live Postfix
queue, a spool copy, an export folder): it feeds held batches to the workers that send
them; `plan` is what a flush decides and reports (SRS senders, outcomes, the dry run);
`settle` deletes what smarthosts accepted and releases the rest; `holding` is the hold
step shared with `export`, which writes held mail to a folder instead; `prefetch`
reads queue files ahead. Builds on `rescue.smarthost`, `rescue.journal`, `rescue.srs`
and `rescue.postfix`; the CLI and the service call it.
"""
