"""Feature-based models and recommenders with PLM features, the registry of recommender rows (`rows`),
and the comparison that evaluates them."""
