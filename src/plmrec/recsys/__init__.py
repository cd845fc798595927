"""Feature-based models and recommenders with PLM features, and the comparison that evaluates them."""
