"""The paper's experiments: models, data, runner and CLI. The core library never imports this package."""
