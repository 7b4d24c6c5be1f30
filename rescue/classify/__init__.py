"""Knowing the queue: which provider each deferred recipient waits on, and how we know.

The provider catalog (data, read from a JSON copy while it is current), delay-reason
parsing, DNS MX lookups and the classifier; on top of them the inventory (the listing,
classified), the selection a flush takes, and the qshape-like shape `scan` shows.
Imports only values (`rescue.model`, `rescue.config`, `rescue.errors`) and
`rescue.postfix`'s listing; never a flush, a smarthost or the journal.
"""
