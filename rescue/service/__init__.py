"""`queue-rescue run`: reroute provider-specific deferrals by itself, as a systemd service.

`autorules` decides what a cycle takes and within which quotas (pure); `loop` runs the
cycles over `rescue.flush`; `cycle` is what one cycle did, as the service reports it;
`routing` builds the route around failing providers (`rescue.route`) from the config;
`sdnotify` talks to systemd; `metrics` serves Prometheus. The top of the stack beside
the CLI: nothing below imports it.
"""
