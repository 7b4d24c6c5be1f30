"""Postfix as an edge: what queue-rescue reads from it and says to it.

Its commands (postqueue, postsuper, postcat), the `postqueue -j` listing, queue files
and defer logs read directly (also without Postfix running), the deferred queue listed
from its files as showq lists it (helper processes, for `scan`), the `MailQueue` interface
that the live queue and its copies share, and the socketmap protocol Postfix speaks to
table servers. Imports only values (`rescue.model`,
`rescue.config`, `rescue.errors`); everything else builds on it.
"""
