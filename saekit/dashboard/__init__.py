"""Static, self-contained HTML dashboards (and Neuronpedia-shaped JSON) built from an analysis store."""
