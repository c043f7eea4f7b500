"""gpt-shakespeare (Sec. 5.6, Table 7): ``experiment.py`` the contract, ``model.py`` the GPT, ``sample.py`` the ``colu sample`` command."""
