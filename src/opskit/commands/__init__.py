"""One module per area of commands; each has register(app). See opskit/cli.py.

Start-up: a command module imports only typer and _common at its top; each command imports
the core it calls inside its body, so `opskit --help` and every other command pay only for
what they run.
"""
