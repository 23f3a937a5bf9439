"""The centre's command-line tools for its administrators: serve, config, db, user, register,
key, verify. Each module has ``add_arguments(parser)`` and ``run(args)`` (see ``guetteur.cli``)."""
