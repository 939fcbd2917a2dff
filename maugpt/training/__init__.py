"""Training: the LightningModule, its callbacks, checkpoint IO and the command line."""
