"""Per-deployment local agent: observes its engine and traffic, forecasts load, sizes its pools."""
