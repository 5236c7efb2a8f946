"""The live explorer (saekit serve): a local web app and a Neuronpedia-compatible JSON API over runs."""
