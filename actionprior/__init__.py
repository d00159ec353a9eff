"""actionprior: learned action priors for cross-embodiment VLA policies."""
