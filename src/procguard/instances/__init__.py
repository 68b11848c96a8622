"""Instances: the state directory, one-instance-per-name locks, identity markers,
safe spawning and cleanup. The state directory is a namespace: nothing here
ever signals a process that carries the marker of another state directory.

Import the submodule you need (``procguard.instances.lock``, ``.marker``,
``.identity``, ``.spawn``, ``.statedir``, ``.cleanup``, ``.replace``); nothing is imported
here so that every command pays only for what it uses.
"""
