"""The command line: Hydra front end, root schemas, run folders, the commands.

The top layer: nothing else imports it (the ``__main__`` shims of the packages
excepted). ``hydra`` composes and checks typed configs, ``schemas`` holds every
root config, ``run_dir`` prepares run folders, ``cluster`` the Slurm environment;
``train``, ``data``, ``eval``, ``infer`` and ``speech`` are the commands.
"""
