"""Route new mail around a provider in trouble, before it waits in the queue.

`breaker` holds each provider's state (healthy or rerouting) and its transitions (pure);
`entries` says which recipient domains the transport table lists (pure); `relayserver`
speaks SMTP/LMTP to Postfix over `inbox` (a connection's lines and message text) and
`relay` passes each transaction on to the smarthost pool;
`control` ties them to the journal, the table file and the probe for the service.
Uses smarthost, srs, journal, diagnose (the probe) and postfix; only service and cli use it.
"""
