"""`queue-rescue completion SHELL`: the shell's completion script, made by click."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh")
PROG = "queue-rescue"
# The variable click's completion reads: _{PROG in upper case, "-" as "_"}_COMPLETE.
COMPLETE_VAR = "_QUEUE_RESCUE_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (commands, options, choices).

    \b
    bash: queue-rescue completion bash > /etc/bash_completion.d/queue-rescue
    zsh:  queue-rescue completion zsh > "${fpath[1]}/_queue-rescue"
          (or eval "$(queue-rescue completion zsh)" in ~/.zshrc)
    """
    root = ctx.find_root().command
    kind = get_completion_class(shell)
    assert kind is not None  # click ships both
    click.echo(kind(root, {}, PROG, COMPLETE_VAR).source(), nl=False)
