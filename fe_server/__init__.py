"""The FE server: one process serving one shard and hosting the services named in its settings.

``python -m fe_server --shard 1 --services user,visit`` runs one; :mod:`fe_server.app` builds it.
"""
