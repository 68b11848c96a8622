"""Instances: the state directory, one-instance-per-name locks, identity markers,
safe spawning and cleanup (DESIGN.md section 5).

Import the submodule you need (``procguard.instances.lock``,
``.identity``, ``.spawn``, ``.statedir``, ``.cleanup``); nothing is imported
here so that every command pays only for what it uses.
"""
