"""`queue-rescue run`: reroute provider-specific deferrals by itself, as a systemd service.

`autorules` decides what a cycle takes and within which quotas (pure); `loop` runs the
cycles over `rescue.flush`; `sdnotify` talks to systemd; `metrics` serves Prometheus.
The top of the stack beside the CLI: nothing below imports it.
"""
