"""RunInfra webhooks: verify, parse and react to RunInfra's signed webhooks."""
