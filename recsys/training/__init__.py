"""Training: LightningModules, DataModules, callbacks and the logger choice."""
