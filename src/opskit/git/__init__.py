"""The one door to git: every git process starts here (repo.py); the deployed worktree (worktree.py); the canonical branch and landing a commit on it (land.py)."""
