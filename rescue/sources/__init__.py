"""Mail that is not in a running Postfix: a copy of a queue directory, and export folders.

Each is a `MailQueue` (`rescue.postfix.queue`) a flush can work through, with its own
journal. Imports `rescue.postfix` (queue files, listing) and values.
"""
