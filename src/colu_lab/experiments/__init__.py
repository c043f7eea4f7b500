"""One folder per experiment of the paper; ``colu_lab.registry`` lists them."""
