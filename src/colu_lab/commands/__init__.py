"""The suite's subcommands of ``colu``; each module's ``main(argv)`` is imported only when its command runs."""
