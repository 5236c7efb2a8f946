"""Feature analysis of a trained dictionary: per-latent statistics, decoder geometry, logit weights, examples.

``analyze`` runs everything and writes the analysis store (``store``) that dashboards are built from;
``cli`` adds the ``analyze`` and ``dashboard`` subcommands and the quickstart's dashboard hook.
"""
