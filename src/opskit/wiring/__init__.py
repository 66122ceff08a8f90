"""How opskit is wired into a host without a daemon: git hooks, the crontab block, doctor; the templates they install ship here."""
