"""Diagnose: why a provider refuses the mail, and what to change in DNS.

Pure checks over DNS answers (domain, spfcheck, dmarc, identity, dnsbl), the DNS edge
that gathers the answers (lookup), the SMTP probe (probe), the queue's side (stuck),
what ties findings to stuck mail (explain), the run (run) and the report (report).
"""
