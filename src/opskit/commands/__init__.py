"""One module per area of commands; each has register(app). See opskit/cli.py."""
