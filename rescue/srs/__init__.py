"""SRS: envelope senders rewritten so bounces come back to us, and reversed when they do.

`rewriter` holds the rules (SRS0/SRS1, secrets, expiry). Imports only values; the
bounce map server builds on it with `rescue.postfix.socketmap`.
"""
