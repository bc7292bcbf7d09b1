"""Reactions: async functions declared with ``@handler(TYPE)``, run by the workers for each event of TYPE.

The built-in ones live beside this file (``deployments``, ``embeddings``, ``followup``); a team's own are
modules named in ``RUNINFRA_HANDLERS`` or exposed under the ``runinfra_webhooks.handlers`` entry-point group
(``registry.py`` loads them all). Handlers must be idempotent (jobs run at least once) and raise
``PermanentError`` for what retrying cannot fix. This package imports nothing heavy: the built-ins are
imported by the registry, not here.
"""
