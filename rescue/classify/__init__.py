"""Which provider a deferred recipient is waiting on, and how we know."""
