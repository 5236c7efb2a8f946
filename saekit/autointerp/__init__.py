"""Automated interpretability: explain every latent with an LLM (or a no-LLM baseline) and score the explanations."""
